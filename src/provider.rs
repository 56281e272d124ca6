//! provider (work in progress).
