//! diagnostics (work in progress).
