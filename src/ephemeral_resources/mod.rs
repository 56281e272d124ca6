//! Terraform ephemeral resources (protocol 6.7: Terraform 1.10+, OpenTofu 1.11+):
//! `homelab_kubeconfig`. Older clients never see them.

pub mod kubeconfig;
