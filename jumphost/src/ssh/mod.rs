//! The SSH relay. (Interface skeleton: the SSH-side helper replaces the body.)
