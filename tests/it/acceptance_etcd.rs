//! The etcd registry through the real Terraform CLI (being written).
