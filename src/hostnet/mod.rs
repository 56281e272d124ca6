//! The host's side of the network: reading the host's own networks (addresses and routes) for
//! the plan-time isolation check, and the forwarding rules that federation opens between
//! exactly one pair of instances (their subnets, and their pod CIDRs where the host routes
//! pods), read back for drift.
//!
//! Forwarding lives behind [`Forwarding`]: [`nft::NftForwarding`] (an nftables table owned by
//! the provider inside the netns lab host) and [`iptables::IptablesForwarding`] (rules ahead of
//! libvirt's own REJECT rules, or on vboxnet interfaces). Every implementation works inside an
//! optional network namespace, so tests never touch the root namespace.

pub mod host;
pub mod ip;
pub mod iptables;
pub mod nft;

use async_trait::async_trait;
use thiserror::Error;

use crate::net::Ipv4Net;
use crate::process::CommandError;

pub use host::{host_networks, HostNetwork};

/// One side of a federated pair as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Instance name.
    pub instance: String,
    /// Host-side interface of the instance subnet (bridge, virbr, vboxnet).
    pub iface: String,
    /// The instance subnet.
    pub subnet: Ipv4Net,
    /// The instance's pod CIDR, when the host routes its pods (netns); `None` when pods are
    /// reached through their node's address (Vagrant).
    pub pod_cidr: Option<Ipv4Net>,
}

impl Link {
    /// The networks of this side that a federation forwards: its subnet, then its pod CIDR.
    pub fn networks(&self) -> Vec<Ipv4Net> {
        std::iter::once(self.subnet).chain(self.pod_cidr).collect()
    }
}

/// Why reading or changing the host network failed.
#[derive(Debug, Error)]
pub enum HostNetError {
    /// A host command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A command's output could not be understood.
    #[error("could not read the output of `{cmd}`: {why}")]
    Parse {
        /// The command.
        cmd: String,
        /// What was wrong.
        why: String,
    },
    /// Changing the host needs privileges this process does not have.
    #[error("{0}")]
    NotPermitted(String),
}

/// Forwarding between instance subnets on the lab's host, one pair at a time. Nothing is ever
/// forwarded between subnets that are not an allowed pair; IPv4 forwarding alone is never the
/// only guard.
#[async_trait]
pub trait Forwarding: Send + Sync {
    /// Check, without changing anything, that rules can be written here (root, tools).
    async fn preflight(&self) -> Result<(), HostNetError>;

    /// Allow forwarding between `a` and `b` (their [`Link::networks`]) in both directions, and
    /// nothing else. Idempotent.
    /// Returns one human-readable line per rule or setting it ensured.
    async fn allow_pair(&self, a: &Link, b: &Link) -> Result<Vec<String>, HostNetError>;

    /// The lines `allow_pair` returns for this pair, once everything is in place (no I/O).
    fn describe_pair(&self, a: &Link, b: &Link) -> Vec<String>;

    /// Remove what `allow_pair` added for this pair. Succeeds when already gone. Turns IPv4
    /// forwarding off again when no pair is left.
    async fn deny_pair(&self, a: &Link, b: &Link) -> Result<(), HostNetError>;

    /// What of this pair's rules is missing (empty: all present).
    async fn missing_for_pair(&self, a: &Link, b: &Link) -> Result<Vec<String>, HostNetError>;
}
