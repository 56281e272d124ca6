//! The `vagrant` backend (work in progress).
