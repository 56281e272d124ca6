//! # terraform-provider-homelab
//!
//! A Terraform/OpenTofu provider (plugin protocol 6, served by `tf-provider`) for Kubernetes
//! home labs run as isolated per-client instances on one host. Each instance gets its own
//! host-only subnet, pod CIDR and service CIDR, pairwise disjoint across the host: instances
//! cannot reach each other because no route exists between them. Federation is the one opt-in,
//! audited exception.
//!
//! # Layout
//!
//! Terraform plumbing (maps state to calls, nothing else):
//! - [`provider`]: provider schema, configuration, and the map of resources and data sources.
//! - [`context`]: what configure fills in and every resource reads (`Shared`, `Configured`).
//! - [`resources`]: `homelab_instance` and `homelab_federation`, lifecycle methods in order.
//! - [`data_sources`]: `homelab_cidr_allocation`, `homelab_reachability`.
//! - [`ephemeral_resources`]: `homelab_kubeconfig` (never in state or plan files).
//! - [`diagnostics`]: the one place where domain errors become Terraform diagnostics.
//! - [`logging`]: `tracing` output in the hclog JSON form Terraform shows under `TF_LOG`.
//! - [`schema`]: schema building blocks that make every attribute carry a description.
//!
//! Domain (never imports `tf_provider`):
//! - [`settings`]: validated provider settings (pools, prefixes, TTL, backend choices, the
//!   etcd store's block).
//! - [`net`]: pure CIDR arithmetic and overlap checks.
//! - [`registry`]: the instance registry (`<home>/instances.json`): its model, errors and the
//!   `Store` trait, allocation, reservations, federation records, the file store (lock, atomic
//!   write, generations), the etcd store (one registry for several lab hosts: transactions
//!   guarded by revision compares, reservations on leases), its in-memory twin, `registry
//!   check`/`repair` and `registry migrate`.
//! - [`audit`]: the append-only, hash-chained event log (`<home>/events.jsonl`).
//! - [`backend`]: the `Backend` trait; `netns` (nodes and pods as namespaces) and `vagrant`
//!   implementations; `backend::pods`, the pod address plan (each node's slice of the pod CIDR).
//! - [`hostnet`]: the host's own networks, forwarding rules for federated pairs, and the one
//!   typed reader of `ip -j` output.
//! - [`federation`]: opening, checking and closing a federated pair (host, guests, clusters).
//! - [`reachability`]: the isolation proof at read time: ICMP probes from every guest, a matrix.
//! - [`k8s`]: NetworkPolicies for federation, through `kube` on an injected client.
//! - [`process`]: running host commands with errors that name the command and its stderr.
//! - [`parent`]: watching the Terraform process that started the provider.
//! - [`recovery`]: taking away what interrupted applies left, and instances by name.
//! - [`cli`]: the provider binary's own subcommands (reservations, audit verification, docs).
//! - [`docs`]: the `docs/` generator (registry layout) from the schema and `examples/`.

pub mod audit;
pub mod backend;
pub mod cli;
pub mod context;
pub mod data_sources;
pub mod diagnostics;
pub mod docs;
pub mod ephemeral_resources;
pub mod federation;
pub mod hostnet;
pub mod k8s;
pub mod logging;
pub mod net;
pub mod parent;
pub mod process;
pub mod provider;
pub mod reachability;
pub mod recovery;
pub mod registry;
pub mod resources;
pub mod schema;
pub mod settings;

/// Serve the provider over Terraform's plugin protocol 6 until Terraform shuts it down.
///
/// Ctrl-C in a terminal reaches the whole foreground process group, provider included. Like
/// providers written in Go, this one does not die of it: Terraform sends StopProvider, which
/// stops in-flight operations cleanly (see `tf_provider::stop_token`).
pub async fn serve() -> std::io::Result<()> {
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::spawn(async move {
        while sigint.recv().await.is_some() {
            tracing::info!("SIGINT received: waiting for Terraform's StopProvider");
        }
    });
    // Killed Terraform: stop, leave the interrupted creations for the next apply to adopt.
    parent::watch(std::time::Duration::from_secs(30));
    let provider = provider::HomelabProvider::new();
    let shared = provider.shared();
    tf_provider::serve("homelab", provider)
        .await
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    shared.ended_cleanly();
    Ok(())
}
