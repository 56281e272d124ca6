//! Shared helpers for the integration tests: one file per concern.
#![allow(dead_code)]
pub mod lab;
pub mod terraform;
pub mod netns;
pub mod release;
pub mod vagrant;
pub mod vm;
pub mod worker;
pub mod fake_k8s;
pub mod etcd_cluster;
