//! resources (work in progress).
