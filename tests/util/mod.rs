//! Shared helpers for the integration tests: one file per concern.
#![allow(dead_code)]
