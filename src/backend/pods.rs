//! The pod address plan of an instance, pure arithmetic: each node owns one slice of the
//! instance's pod CIDR (as a CNI's per-node pod CIDR), the node's own address in it is the
//! slice's first host address (the pods' gateway), and its pods take the next addresses.
//!
//! Slices follow the node's place in the naming plan, not its position in a list, so a node
//! keeps its slice when workers are added or removed: `cp-1..cp-3` take slices 0 to 2,
//! `worker-1..worker-10` slices 3 to 12. A slice is a /24 when the pod CIDR is a /20 or wider
//! (`10.244.0.0/16`: cp-1 `10.244.0.0/24`, worker-1 `10.244.3.0/24`), else the pod CIDR's
//! prefix + 4 (16 slices).

use std::net::Ipv4Addr;

use super::{NodeSpec, Role, MAX_CONTROL_PLANES};
use crate::net::{self, Ipv4Net};

/// Most pods a node can carry (`pods_per_node`).
pub const MAX_PODS_PER_NODE: u32 = 8;
/// Default pods per node.
pub const DEFAULT_PODS_PER_NODE: u32 = 1;
/// The lab setting (registry `lab.settings`) that records an instance's pods per node.
pub const SETTING: &str = "pods_per_node";

/// Pods per node as a lab's settings record them; labs made before pods existed have none
/// recorded and get the default (their next apply adds the pods).
pub fn pods_per_node_of(settings: &std::collections::BTreeMap<String, String>) -> u32 {
    settings.get(SETTING).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_PODS_PER_NODE)
}

/// The longest slice prefix that still holds a node address, [`MAX_PODS_PER_NODE`] pods, the
/// network and the broadcast address (16 addresses).
pub const LONGEST_SLICE_PREFIX: u8 = 28;

/// One node's share of the pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePods {
    /// The node's name (`acme-worker-1`).
    pub node: String,
    /// The node's address on the instance subnet (where other nodes route the slice).
    pub node_ip: Ipv4Addr,
    /// The node's slice of the pod CIDR.
    pub slice: Ipv4Net,
    /// The node's own address in the slice: the gateway of its pods.
    pub gateway: Ipv4Addr,
    /// Its pods' addresses, `pod-1` first.
    pub pods: Vec<Ipv4Addr>,
}

/// Why a pod plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodPlanError {
    /// The pod CIDR is too small to give every possible node a slice with room for its pods.
    #[error("pod CIDR {pod_cidr} is too small for pods: each of up to 13 nodes needs a slice of at least a /{LONGEST_SLICE_PREFIX}, so it must be a /24 or wider")]
    PodCidrTooSmall {
        /// The pod CIDR.
        pod_cidr: Ipv4Net,
    },
    /// More pods per node than a slice holds, or than allowed.
    #[error("{pods} pods per node is more than the {max} allowed")]
    TooManyPods {
        /// What was asked.
        pods: u32,
        /// The most allowed.
        max: u32,
    },
}

/// The slice prefix for `pod_cidr`.
pub fn slice_prefix(pod_cidr: &Ipv4Net) -> Result<u8, PodPlanError> {
    let p = (pod_cidr.prefix_len() + 4).max(24);
    if p > LONGEST_SLICE_PREFIX {
        return Err(PodPlanError::PodCidrTooSmall { pod_cidr: *pod_cidr });
    }
    Ok(p)
}

/// The slice index of a node by its place in the naming plan (`None`: not a planned name).
fn slice_index(instance: &str, node: &NodeSpec) -> Option<u32> {
    let rest = node.name.strip_prefix(instance)?.strip_prefix('-')?;
    let (base, n) = match node.role {
        Role::ControlPlane => (0, rest.strip_prefix("cp-")?),
        Role::Worker => (MAX_CONTROL_PLANES, rest.strip_prefix("worker-")?),
    };
    let n: u32 = n.parse().ok()?;
    Some(base + n.checked_sub(1)?)
}

/// The slice of the pod CIDR that slice index `i` names.
fn nth_slice(pod_cidr: &Ipv4Net, prefix: u8, i: u32) -> Option<Ipv4Net> {
    let size = 1u64 << (32 - u32::from(prefix));
    let start = u64::from(u32::from(pod_cidr.network())) + u64::from(i) * size;
    let addr = Ipv4Addr::from(u32::try_from(start).ok()?);
    let slice = Ipv4Net::new(addr, prefix).ok()?;
    pod_cidr.contains(&slice).then_some(slice)
}

/// Every node's slice, gateway and pods, in node order. `pods_per_node = 0` still gives each
/// node its slice (with no pods).
pub fn plan(
    instance: &str,
    pod_cidr: &Ipv4Net,
    nodes: &[NodeSpec],
    pods_per_node: u32,
) -> Result<Vec<NodePods>, PodPlanError> {
    if pods_per_node > MAX_PODS_PER_NODE {
        return Err(PodPlanError::TooManyPods { pods: pods_per_node, max: MAX_PODS_PER_NODE });
    }
    let prefix = slice_prefix(pod_cidr)?;
    let too_small = || PodPlanError::PodCidrTooSmall { pod_cidr: *pod_cidr };
    nodes
        .iter()
        .map(|n| {
            let slice = slice_index(instance, n)
                .and_then(|i| nth_slice(pod_cidr, prefix, i))
                .ok_or_else(too_small)?;
            let gateway = net::nth_address(&slice, 1).ok_or_else(too_small)?;
            let pods = (0..pods_per_node)
                .map(|k| net::nth_address(&slice, 2 + k).ok_or_else(too_small))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(NodePods { node: n.name.clone(), node_ip: n.ip, slice, gateway, pods })
        })
        .collect()
}

/// The name of pod `k` (from 1) of `node`: `<node>-pod-<k>`.
pub fn pod_name(node: &str, k: usize) -> String {
    format!("{node}-pod-{k}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::plan_nodes;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn slices_follow_the_naming_plan_and_pods_follow_the_node_address() {
        let nodes = plan_nodes("acme", &n("192.168.56.0/24"), 1, 2).unwrap();
        let p = plan("acme", &n("10.244.0.0/16"), &nodes, 2).unwrap();
        let got: Vec<(String, String, String, Vec<String>)> = p
            .iter()
            .map(|x| (x.node.clone(), x.slice.to_string(), x.gateway.to_string(), x.pods.iter().map(|a| a.to_string()).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("acme-cp-1".into(), "10.244.0.0/24".into(), "10.244.0.1".into(), vec!["10.244.0.2".into(), "10.244.0.3".into()]),
                ("acme-worker-1".into(), "10.244.3.0/24".into(), "10.244.3.1".into(), vec!["10.244.3.2".into(), "10.244.3.3".into()]),
                ("acme-worker-2".into(), "10.244.4.0/24".into(), "10.244.4.1".into(), vec!["10.244.4.2".into(), "10.244.4.3".into()]),
            ]
        );
        assert_eq!(p[1].node_ip, "192.168.56.20".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn a_node_keeps_its_slice_when_workers_are_added_or_removed() {
        let subnet = n("192.168.56.0/24");
        let pod = n("10.245.0.0/16");
        let slice_of = |workers, node: &str| {
            let nodes = plan_nodes("g", &subnet, 3, workers).unwrap();
            plan("g", &pod, &nodes, 1).unwrap().into_iter().find(|x| x.node == node).unwrap().slice
        };
        assert_eq!(slice_of(1, "g-worker-1"), slice_of(10, "g-worker-1"));
        assert_eq!(slice_of(10, "g-worker-10"), n("10.245.12.0/24"));
    }

    #[test]
    fn slices_of_the_largest_instance_are_disjoint_and_inside_the_pod_cidr() {
        for pod in ["10.244.0.0/16", "10.244.0.0/20", "10.244.16.0/24"] {
            let pod = n(pod);
            let nodes = plan_nodes("x", &n("192.168.56.0/24"), 3, 10).unwrap();
            let p = plan("x", &pod, &nodes, MAX_PODS_PER_NODE).unwrap();
            for (i, a) in p.iter().enumerate() {
                assert!(pod.contains(&a.slice), "{} outside {pod}", a.slice);
                assert!(a.pods.iter().all(|ip| a.slice.contains(ip) && *ip != a.slice.broadcast()));
                for b in &p[i + 1..] {
                    assert!(!net::overlaps(&a.slice, &b.slice), "{} and {} overlap", a.slice, b.slice);
                }
            }
        }
    }

    #[test]
    fn a_pod_cidr_narrower_than_a_24_or_too_many_pods_is_refused() {
        let nodes = plan_nodes("x", &n("192.168.56.0/24"), 1, 1).unwrap();
        assert_eq!(
            plan("x", &n("10.244.0.0/25"), &nodes, 1),
            Err(PodPlanError::PodCidrTooSmall { pod_cidr: n("10.244.0.0/25") })
        );
        assert!(matches!(plan("x", &n("10.244.0.0/16"), &nodes, 9), Err(PodPlanError::TooManyPods { .. })));
        assert!(plan("x", &n("10.244.0.0/16"), &nodes, 0).unwrap()[0].pods.is_empty());
    }

    #[test]
    fn pod_names_extend_their_node_name() {
        assert_eq!(pod_name("acme-worker-1", 1), "acme-worker-1-pod-1");
    }
}
