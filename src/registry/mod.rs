//! registry (work in progress).
