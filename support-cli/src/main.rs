//! Entry point of `support-cli` (skeleton until its issue lands).
fn main() {}
