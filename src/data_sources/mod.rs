//! Terraform data sources: `homelab_cidr_allocation`, `homelab_reachability`.

pub mod cidr_allocation;
pub mod reachability;
