//! Terraform data sources: `homelab_cidr_allocation`.

pub mod cidr_allocation;
