//! logging (work in progress).
