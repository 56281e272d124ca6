//! The one integration-test binary. Modules go from least to most powerful: trait-level tests
//! of the domain modules, then acceptance tests through the real Terraform CLI.

#[path = "../util/mod.rs"]
mod util;

mod hostnet;
mod k8s_fake_api;
mod netns_backend;
mod netns_pods;
mod reachability;
mod registry_processes;
mod registry_etcd_processes;
mod vagrant_render;
mod vagrant_provision_scripts;
mod vagrant_runner;
mod vagrant_vms;
mod tf_provider_patches;
mod vagrant_box_race;
mod acceptance_foundation;
mod acceptance_instance;
mod acceptance_lifecycle;
mod acceptance_interrupted;
mod acceptance_vagrant;
mod acceptance_vagrant_fake;
mod acceptance_federation;
mod acceptance_federation_fake_k8s;
mod acceptance_audit;
mod acceptance_reachability;
mod acceptance_quickstart;
mod acceptance_quickstart_etcd;
mod acceptance_repair;
mod acceptance_release;
mod acceptance_etcd;
