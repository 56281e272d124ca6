//! Backends bring an instance's lab up, look at it, and tear it down. One trait, chosen at
//! configure time: [`netns::NetnsBackend`] (network namespaces, for CI and quick labs) and
//! [`vagrant::VagrantBackend`] (VMs). The resource layer only ever talks to [`Backend`].
//!
//! The model is convergence: [`Backend::converge`] makes the lab match a [`LabSpec`] (creating
//! what is missing, removing nodes the spec no longer lists, leaving the rest untouched), so
//! create, scale and repair are one idempotent operation that a crashed run can simply repeat.

pub mod netns;
pub mod pods;
pub mod set;
pub mod vagrant;

pub use set::host_backends;

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::net::{self, Ipv4Net};
use crate::process::CommandError;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the Kubernetes control plane (`<name>-cp-N`, at .10, .11, .12).
    ControlPlane,
    /// Runs workloads (`<name>-worker-N`, from .20 up).
    Worker,
}

impl Role {
    /// The role as shown in state (`control-plane`, `worker`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// One node (VM or namespace) of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// `<instance>-cp-1`, `<instance>-worker-3`, …
    pub name: String,
    /// Control plane or worker.
    pub role: Role,
    /// Its address on the instance subnet.
    pub ip: Ipv4Addr,
}

/// Offset of the first control plane inside the subnet (.10).
pub const CONTROL_PLANE_OFFSET: u32 = 10;
/// Offset of the first worker inside the subnet (.20).
pub const WORKER_OFFSET: u32 = 20;
/// Offset of the control planes' virtual IP (.5), when an instance has several: the API
/// address that keepalived moves to a control plane whose API server is healthy.
pub const CONTROL_PLANE_VIP_OFFSET: u32 = 5;

/// The address of an instance's Kubernetes API: its first control plane's when it has one,
/// the virtual IP (`CONTROL_PLANE_VIP_OFFSET`) when it has several, so that the cluster
/// outlives its first control plane. `None` without a control plane.
pub fn api_address(subnet: &Ipv4Net, nodes: &[NodeSpec]) -> Option<std::net::Ipv4Addr> {
    let cps: Vec<&NodeSpec> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    match cps.len() {
        0 => None,
        1 => Some(cps[0].ip),
        _ => net::nth_address(subnet, CONTROL_PLANE_VIP_OFFSET),
    }
}

/// Most control planes an instance can have.
pub const MAX_CONTROL_PLANES: u32 = 3;
/// Most workers an instance can have.
pub const MAX_WORKERS: u32 = 10;

/// The nodes of an instance: control planes `<name>-cp-1`… at .10, .11, .12; workers
/// `<name>-worker-1`… from .20 up. `None` when the subnet is too small to hold them.
pub fn plan_nodes(
    instance: &str,
    subnet: &Ipv4Net,
    control_planes: u32,
    workers: u32,
) -> Option<Vec<NodeSpec>> {
    let mut nodes = Vec::new();
    for i in 0..control_planes {
        nodes.push(NodeSpec {
            name: format!("{instance}-cp-{}", i + 1),
            role: Role::ControlPlane,
            ip: net::nth_address(subnet, CONTROL_PLANE_OFFSET + i)?,
        });
    }
    for i in 0..workers {
        nodes.push(NodeSpec {
            name: format!("{instance}-worker-{}", i + 1),
            role: Role::Worker,
            ip: net::nth_address(subnet, WORKER_OFFSET + i)?,
        });
    }
    // The broadcast address is never a node.
    let last = net::nth_address(subnet, (1u32 << (32 - u32::from(subnet.prefix_len()))) - 1)?;
    if nodes.iter().any(|n| n.ip == last) {
        return None;
    }
    Some(nodes)
}

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

/// Options only the Vagrant backend uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VagrantOptions {
    /// Box name, e.g. `bento/ubuntu-24.04`.
    pub r#box: String,
    /// Box version constraint, when pinned.
    pub box_version: Option<String>,
    /// vCPUs per VM.
    pub cpus: u32,
    /// Memory per VM in MiB.
    pub memory_mb: u32,
    /// Kubernetes minor to install, e.g. `1.33`.
    pub kubernetes_version: String,
    /// Install and join Kubernetes (false: plain VMs).
    pub provision: bool,
    /// Cilium version to install, e.g. `1.17.4`.
    #[serde(default = "default_cilium_version")]
    pub cilium_version: String,
    /// Where provisioning downloads from (none set: the upstream sites).
    #[serde(default)]
    pub mirrors: Mirrors,
}

fn default_cilium_version() -> String {
    vagrant::DEFAULT_CILIUM_VERSION.to_string()
}

/// Where provisioning fetches what it installs, for offline or mirrored labs. Each is a URL
/// (validated by [`vagrant::check_options`]); `None` means the upstream site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirrors {
    /// Replaces `https://pkgs.k8s.io/core:/stable:` (a mirror in the same layout:
    /// `<url>/v1.33/deb/` with its `Release.key`).
    pub kubernetes_packages: Option<String>,
    /// An apt proxy (e.g. apt-cacher-ng) every apt download in the guests goes through.
    pub apt_proxy: Option<String>,
    /// An OCI registry mirror containerd tries before registry.k8s.io, quay.io, docker.io
    /// and ghcr.io.
    pub images: Option<String>,
    /// Replaces the cilium-cli release download folder (holding `cilium-linux-amd64.tar.gz`
    /// and its `.sha256sum`).
    pub cilium_cli: Option<String>,
}

/// Everything a backend needs to build one instance's lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Instance name (a validated DNS label).
    pub instance: String,
    /// Host-only subnet of the instance.
    pub subnet: Ipv4Net,
    /// Address of the host side on the subnet (.1).
    pub gateway: Ipv4Addr,
    /// Pod CIDR of the cluster.
    pub pod_cidr: Ipv4Net,
    /// Service CIDR of the cluster.
    pub service_cidr: Ipv4Net,
    /// The instance's own management network (libvirt only).
    pub mgmt_cidr: Option<Ipv4Net>,
    /// Nodes, control planes first.
    pub nodes: Vec<NodeSpec>,
    /// Pods each node carries (netns only: pod namespaces addressed from the node's slice of
    /// the pod CIDR, see [`pods`]; Vagrant clusters run real pods and ignore it).
    pub pods_per_node: u32,
    /// Vagrant-only options (`None` for netns).
    pub vagrant: Option<VagrantOptions>,
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
    Render(#[from] vagrant::RenderError),
    /// A Vagrant option cannot be used (it names the attribute at fault).
    #[error(transparent)]
    Option(#[from] vagrant::OptionError),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_the_only_control_plane_or_the_virtual_ip_of_several() {
        let subnet: Ipv4Net = "192.168.56.0/24".parse().unwrap();
        let one = plan_nodes("acme", &subnet, 1, 2).unwrap();
        assert_eq!(api_address(&subnet, &one), Some("192.168.56.10".parse().unwrap()));
        let three = plan_nodes("acme", &subnet, 3, 2).unwrap();
        let vip = api_address(&subnet, &three).unwrap();
        assert_eq!(vip, "192.168.56.5".parse::<std::net::Ipv4Addr>().unwrap());
        assert!(three.iter().all(|n| n.ip != vip) && vip != net::gateway(&subnet), "the VIP is a node's or the gateway's");
        assert_eq!(api_address(&subnet, &[]), None);
    }

    #[test]
    fn nodes_follow_the_naming_and_address_plan() {
        let subnet: Ipv4Net = "192.168.56.0/24".parse().unwrap();
        let nodes = plan_nodes("acme", &subnet, 3, 2).unwrap();
        let got: Vec<_> = nodes.iter().map(|n| (n.name.as_str(), n.ip.to_string())).collect();
        assert_eq!(
            got,
            vec![
                ("acme-cp-1", "192.168.56.10".to_string()),
                ("acme-cp-2", "192.168.56.11".to_string()),
                ("acme-cp-3", "192.168.56.12".to_string()),
                ("acme-worker-1", "192.168.56.20".to_string()),
                ("acme-worker-2", "192.168.56.21".to_string()),
            ]
        );
        assert_eq!(nodes[0].role, Role::ControlPlane);
        assert_eq!(nodes[4].role, Role::Worker);
    }

    #[test]
    fn subnet_too_small_for_nodes_is_refused() {
        let subnet: Ipv4Net = "192.168.56.0/28".parse().unwrap();
        assert!(plan_nodes("acme", &subnet, 1, 1).is_none());
        let subnet: Ipv4Net = "192.168.56.0/27".parse().unwrap();
        assert!(plan_nodes("acme", &subnet, 3, 10).is_some());
    }
}

/// Which backend an instance uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Network namespaces.
    Netns,
    /// Vagrant VMs.
    Vagrant,
}

impl BackendKind {
    /// `netns` / `vagrant`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Netns => "netns",
            BackendKind::Vagrant => "vagrant",
        }
    }

    /// Parse `netns` / `vagrant`.
    pub fn parse(text: &str) -> Option<BackendKind> {
        match text {
            "netns" => Some(BackendKind::Netns),
            "vagrant" => Some(BackendKind::Vagrant),
            _ => None,
        }
    }
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
