//! Library of `assist-client`.
