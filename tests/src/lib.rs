//! harness (being written)
