//! Backends bring an instance's lab up, look at it, and tear it down. One trait, chosen at
//! configure time: [`netns::NetnsBackend`] (network namespaces, for CI and quick labs) and
//! [`vagrant::VagrantBackend`] (VMs). The resource layer only ever talks to [`Backend`].
//!
//! The model is convergence: [`Backend::converge`] makes the lab match a [`LabSpec`] (creating
//! what is missing, removing nodes the spec no longer lists, leaving the rest untouched), so
//! create, scale and repair are one idempotent operation that a crashed run can simply repeat.
//!
//! Here: the trait, what a lab reports ([`LabStatus`]), how an operation is bounded
//! ([`OpControl`]) and [`BackendError`]. What a lab is ([`LabSpec`], the node plan, the backend
//! kinds, the Vagrant options) lives in [`spec`], beneath the backends and the settings; the
//! backends of this host are built in [`set`].

pub mod netns;
pub mod pods;
pub mod set;
pub mod spec;
pub mod vagrant;

pub use spec::*;

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::net::Ipv4Net;
use crate::process::CommandError;








/// What one ICMP probe from a guest found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeOutcome {
    /// An echo reply came back.
    Answered,
    /// The guest itself has no route: sending failed at once (`Network is unreachable`).
    NoRoute(String),
    /// A router on the way answered with an ICMP error (net or host unreachable, prohibited).
    Unreachable(String),
    /// Nothing came back before the timeout (what a firewall that drops looks like).
    NoAnswer,
    /// The probe could not be made (the guest is missing, a tool failed).
    Failed(String),
}

impl ProbeOutcome {
    /// Whether the target answered.
    pub fn reachable(&self) -> bool {
        matches!(self, ProbeOutcome::Answered)
    }

    /// The outcome in words, for the `reason` column.
    pub fn reason(&self, timeout: Duration) -> String {
        match self {
            ProbeOutcome::Answered => "answered".into(),
            ProbeOutcome::NoRoute(why) => format!("no route ({why})"),
            ProbeOutcome::Unreachable(why) => format!("unreachable ({why})"),
            ProbeOutcome::NoAnswer => format!("no answer within {} ms", timeout.as_millis()),
            ProbeOutcome::Failed(why) => format!("probe failed: {why}"),
        }
    }
}

/// A route the lab's host needs to reach pods: a node's pod slice via that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// The node's slice of the pod CIDR.
    pub slice: Ipv4Net,
    /// The node's address on the instance subnet.
    pub via: Ipv4Addr,
    /// The node's name.
    pub node: String,
}





/// What a backend found of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// `running`, `poweroff`, `not_created`, `missing`, `broken: <why>`… (backend's words).
    pub state: String,
    /// Whether the node is up and wired as the spec says.
    pub healthy: bool,
}

/// What a backend found of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LabStatus {
    /// Whether anything of the lab exists at all (false: the whole lab is gone).
    pub exists: bool,
    /// One entry per node of the spec, in spec order.
    pub nodes: Vec<NodeStatus>,
    /// Nodes of this instance that exist but are not in the spec (left over by a scale-down).
    pub extra_nodes: Vec<String>,
    /// Pieces of the lab itself (bridge, gateway address, networks) that are missing or wrong.
    pub problems: Vec<String>,
}

impl LabStatus {
    /// Everything the spec asks for is there and nothing else.
    pub fn healthy(&self) -> bool {
        self.exists
            && self.problems.is_empty()
            && self.extra_nodes.is_empty()
            && self.nodes.iter().all(|n| n.healthy)
    }

    /// A one-word summary: `running` when healthy, else the first non-running node state,
    /// `degraded` or `absent`.
    pub fn summary(&self) -> String {
        if !self.exists {
            return "absent".into();
        }
        if self.healthy() {
            return "running".into();
        }
        self.nodes
            .iter()
            .find(|n| !n.healthy)
            .map(|n| n.state.clone())
            .unwrap_or_else(|| "degraded".into())
    }
}

/// Limits on a long-running backend operation: a deadline and Terraform's stop signal.
#[derive(Debug, Clone)]
pub struct OpControl {
    /// Give up (and stop what was started) after this long.
    pub timeout: Duration,
    /// Cancelled when Terraform sends StopProvider (Ctrl-C).
    pub cancel: CancellationToken,
}

impl OpControl {
    /// A control with a timeout and a fresh (never cancelled) token.
    pub fn with_timeout(timeout: Duration) -> Self {
        OpControl {
            timeout,
            cancel: CancellationToken::new(),
        }
    }
}

/// Why a backend operation failed.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The backend cannot run on this host as configured (missing capability or tool).
    #[error("{what}")]
    Unavailable {
        /// What is missing.
        what: String,
        /// What the user can do about it.
        fix: String,
    },
    /// A host command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The operation ran past its timeout; what was running has been stopped.
    #[error("timed out after {}s while running `{running}`; it was stopped", timeout.as_secs())]
    Timeout {
        /// The limit that was hit.
        timeout: Duration,
        /// The command or step that was running.
        running: String,
    },
    /// Terraform asked the provider to stop; what was running has been stopped.
    #[error("interrupted by Terraform while running `{running}`; it was stopped")]
    Cancelled {
        /// The command or step that was running.
        running: String,
    },
    /// A long-running tool (vagrant) failed: command, exit status and its last lines.
    #[error("`{cmd}` failed ({status}); last lines of its output:\n{tail}")]
    ToolFailed {
        /// The command line.
        cmd: String,
        /// Exit status as text.
        status: String,
        /// The last lines it printed.
        tail: String,
    },
    /// Files of the lab (Vagrantfile, scripts, kubeconfig) could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lab cannot be rendered from its plan (a name outside the naming plan, options
    /// missing).
    #[error(transparent)]
    Render(#[from] vagrant::render::RenderError),
    /// A Vagrant option cannot be used (it names the attribute at fault).
    #[error(transparent)]
    Option(#[from] vagrant::validate::OptionError),
    /// A host network step failed (the lab host's interfaces, forwarding, nftables).
    #[error(transparent)]
    HostNet(crate::hostnet::HostNetError),
    /// A concurrent step of the backend did not finish (it panicked or was cancelled).
    #[error("{what} did not finish: {source}")]
    Task {
        /// The step.
        what: String,
        /// Why.
        source: tokio::task::JoinError,
    },
    /// Anything else the backend found wrong, in its own words.
    #[error("{0}")]
    Other(String),
    /// A failure while machines were booting, with the last lines of their serial consoles
    /// (what a hung boot printed last).
    #[error("{source}\n{consoles}")]
    WithConsoles {
        /// What failed.
        source: Box<BackendError>,
        /// `last lines of the serial console of <node> (<file>):` blocks.
        consoles: String,
    },
}

/// A way of running labs. Implementations must be idempotent: every method may be called
/// again after a crash or a partial failure and must then finish (or undo) the job.
#[async_trait]
pub trait Backend: Send + Sync {
    /// `netns` or `vagrant`.
    fn name(&self) -> &'static str;

    /// Check, without changing anything, that this host can run the backend (capabilities,
    /// tools). Called at plan time so that a plan fails before anything is touched.
    async fn preflight(&self) -> Result<(), BackendError>;

    /// Make the lab match `spec`: create what is missing, remove nodes of this instance that
    /// the spec no longer lists, repair what is broken, leave healthy nodes untouched.
    /// Returns what exists afterwards.
    async fn converge(&self, spec: &LabSpec, ctl: &OpControl) -> Result<LabStatus, BackendError>;

    /// Look at the lab without changing anything.
    async fn observe(&self, spec: &LabSpec) -> Result<LabStatus, BackendError>;

    /// Remove everything of the lab. Succeeds when it is already gone.
    async fn teardown(&self, spec: &LabSpec, ctl: &OpControl) -> Result<(), BackendError>;

    /// The host-side interface of the instance's subnet (bridge, vboxnet, virbr…), used by
    /// federation to write forwarding rules. An error when the lab has no such interface.
    async fn host_interface(&self, spec: &LabSpec) -> Result<String, BackendError>;

    /// The forwarding implementation that federates instances of this backend on this host.
    fn forwarding(&self) -> std::sync::Arc<dyn crate::hostnet::Forwarding>;

    /// Routes present in each node towards other networks (beyond its own subnet):
    /// `(node, destination)` pairs. Used to check federation routes for drift.
    async fn guest_routes(&self, spec: &LabSpec) -> Result<Vec<(String, Ipv4Net)>, BackendError>;

    /// The guests that hold federation routes, each with the address it routes them via: every
    /// node via the instance gateway (and on `netns` every pod via its node).
    fn guest_route_holders(&self, spec: &LabSpec) -> Vec<(String, Ipv4Addr)> {
        spec.nodes.iter().map(|n| (n.name.clone(), spec.gateway)).collect()
    }

    /// The pod slices the lab's host must route to reach this instance's pods, each via the
    /// node that owns it. Empty when pods are not routed by the host (Vagrant: a cluster's pods
    /// are reached through their node's address), and federation then routes subnets only.
    fn pod_routes(&self, _spec: &LabSpec) -> Vec<PodRoute> {
        Vec::new()
    }

    /// Put in place (`present = true`) or remove this instance's [`Backend::pod_routes`] on the
    /// lab's host (federation). Idempotent both ways; returns the lines of
    /// [`Backend::describe_host_pod_routes`].
    async fn set_host_pod_routes(&self, _spec: &LabSpec, _present: bool, _ctl: &OpControl) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    /// One line per host route [`Backend::set_host_pod_routes`] puts in place (no I/O).
    fn describe_host_pod_routes(&self, _spec: &LabSpec) -> Vec<String> {
        Vec::new()
    }

    /// The lines of [`Backend::describe_host_pod_routes`] whose route is missing on the host.
    async fn missing_host_pod_routes(&self, _spec: &LabSpec) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    /// The guests ICMP probes can start from, with their addresses: every node (and on `netns`
    /// every pod).
    fn probe_sources(&self, spec: &LabSpec) -> Vec<(String, Ipv4Addr)> {
        spec.nodes.iter().map(|n| (n.name.clone(), n.ip)).collect()
    }

    /// Send one ICMP echo from guest `from` (one of [`Backend::probe_sources`]) to each of
    /// `targets` at once, and say what came back within `timeout`, in target order. Probes run
    /// only inside the lab's own guests.
    async fn probe(&self, spec: &LabSpec, from: &str, targets: &[Ipv4Addr], timeout: Duration) -> Result<Vec<ProbeOutcome>, BackendError> {
        let _ = (spec, from, targets, timeout);
        Err(BackendError::Unavailable {
            what: format!("the {} backend cannot probe reachability", self.name()),
            fix: "use the netns or vagrant backend".into(),
        })
    }

    /// Add (`present = true`) or remove a route to `dest` in every one of
    /// [`Backend::guest_route_holders`], via its address there. Idempotent both ways.
    async fn set_guest_route(
        &self,
        spec: &LabSpec,
        dest: Ipv4Net,
        present: bool,
        ctl: &OpControl,
    ) -> Result<(), BackendError>;
}




/// The backends this provider can use, chosen at configure time. Tests inject their own.
pub trait BackendSet: Send + Sync {
    /// The settings a new instance of `kind` records in the registry (e.g. `netns_host`,
    /// `hypervisor`), so later operations find its lab even if the provider settings change.
    fn lab_settings(&self, kind: BackendKind) -> std::collections::BTreeMap<String, String>;

    /// The backend that manages a lab built with `settings`.
    fn backend(
        &self,
        kind: BackendKind,
        settings: &std::collections::BTreeMap<String, String>,
    ) -> std::sync::Arc<dyn Backend>;

    /// Whether instances of `kind` on this host need their own management network.
    fn needs_mgmt_network(&self, kind: BackendKind) -> bool;
}
