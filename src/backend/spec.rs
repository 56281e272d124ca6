//! What a backend is asked to build: the backend kinds, an instance's lab ([`LabSpec`]) with
//! its nodes and their naming and address plan, the API address of its cluster, and the
//! Vagrant options. The data model under the [`super::Backend`] trait: it imports nothing of the
//! backends, so they, the settings and the resource layer all build on it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::net::{self, Ipv4Net};

/// Default Cilium release.
pub const DEFAULT_CILIUM_VERSION: &str = "1.17.4";

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
    DEFAULT_CILIUM_VERSION.to_string()
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
