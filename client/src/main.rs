//! Entry point of `assist-client` (skeleton until its issue lands).
fn main() {}
