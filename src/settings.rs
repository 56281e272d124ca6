//! settings (work in progress).
