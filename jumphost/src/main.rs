//! Entry point of `assist-jumphost` (skeleton until its issue lands).
fn main() {}
