//! data sources (work in progress).
