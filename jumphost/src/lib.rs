//! Library of `assist-jumphost`.
