//! The `netns` backend (work in progress).
