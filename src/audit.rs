//! audit (work in progress).
