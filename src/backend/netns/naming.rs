//! The netns backend's names, all deterministic so that every run finds what an earlier run
//! made: node namespaces `<host_ns>-<node>`, instance bridges `hlb<network in hex>` with a fixed
//! link-layer address, veth ends `hlv<network><offset>`, and the node naming plan (`cp-N`,
//! `worker-N`) with the address it gives each node.

use std::net::Ipv4Addr;

use crate::backend::{CONTROL_PLANE_OFFSET, WORKER_OFFSET};
use crate::net::{self, Ipv4Net};

/// Where `ip netns` keeps named namespaces.
pub(super) const NETNS_DIR: &str = "/run/netns";

/// Prefix of instance bridges in the lab host.
pub const BRIDGE_PREFIX: &str = "hlb";

/// Prefix of the lab-host ends of node veths.
pub const VETH_PREFIX: &str = "hlv";

/// The node end of its veth.
pub const NODE_IFACE: &str = "eth0";

/// The bridge of the instance whose subnet is `subnet`: `hlb` + 8 hex digits of its network
/// address (`192.168.56.0/24` → `hlbc0a83800`). 11 characters.
pub fn bridge_name(subnet: &Ipv4Net) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", u32::from(subnet.network()))
}

/// The fixed link-layer address of the bridge of `subnet`: locally administered `02:68` + the
/// subnet's network address (`192.168.56.0/24` → `02:68:c0:a8:38:00`). Without one, a Linux
/// bridge takes the lowest address of its ports, so adding a node could change the gateway's
/// address under the other nodes' ARP caches (their traffic through the gateway then stalls
/// until the entries expire).
pub fn bridge_mac(subnet: &Ipv4Net) -> String {
    let o = subnet.network().octets();
    format!("02:68:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The lab-host end of the veth of the node at `ip`: `hlv` + 8 hex digits of the subnet's network
/// + 2 hex digits of the node's offset (`.10` → `hlvc0a838000a`). 13 characters. `None` when
///   `ip` is outside the subnet or its offset does not fit in two digits.
pub fn veth_name(subnet: &Ipv4Net, ip: Ipv4Addr) -> Option<String> {
    let offset = net::offset_in(subnet, ip)?;
    (offset < 0x100).then(|| {
        format!(
            "{VETH_PREFIX}{:08x}{offset:02x}",
            u32::from(subnet.network())
        )
    })
}

/// The namespace of a node: `<host_ns>-<node name>`.
pub fn node_netns(host_ns: &str, node: &str) -> String {
    format!("{host_ns}-{node}")
}

/// Whether `rest` (a node name without its `<instance>-`) is a node of the naming plan:
/// exactly `cp-N` or `worker-N`. Exact, so that instance `acme` never claims the nodes of an
/// instance called `acme-worker`.
pub(super) fn is_node_suffix(rest: &str) -> bool {
    let digits = rest
        .strip_prefix("cp-")
        .or_else(|| rest.strip_prefix("worker-"));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The address the naming plan gives the node `rest` (`cp-2` → .11, `worker-1` → .20).
pub(super) fn planned_ip(subnet: &Ipv4Net, rest: &str) -> Option<Ipv4Addr> {
    let (base, n) = if let Some(n) = rest.strip_prefix("cp-") {
        (CONTROL_PLANE_OFFSET, n)
    } else {
        (WORKER_OFFSET, rest.strip_prefix("worker-")?)
    };
    let n: u32 = n.parse().ok()?;
    net::nth_address(subnet, base.checked_add(n.checked_sub(1)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::plan_nodes;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn names_follow_the_documented_examples() {
        assert_eq!(bridge_name(&n("192.168.56.0/24")), "hlbc0a83800");
        assert_eq!(
            veth_name(&n("192.168.56.0/24"), "192.168.56.10".parse().unwrap()).as_deref(),
            Some("hlvc0a838000a")
        );
        assert_eq!(node_netns("homelab", "acme-cp-1"), "homelab-acme-cp-1");
    }

    #[test]
    fn bridge_macs_are_locally_administered_and_distinct_per_subnet() {
        assert_eq!(bridge_mac(&n("192.168.56.0/24")), "02:68:c0:a8:38:00");
        assert_ne!(bridge_mac(&n("192.168.56.0/24")), bridge_mac(&n("192.168.57.0/24")));
    }

    #[test]
    fn names_fit_in_fifteen_characters_even_for_the_largest_values() {
        let subnet = n("255.255.255.0/24");
        assert!(bridge_name(&subnet).len() <= 15);
        assert!(
            veth_name(&subnet, "255.255.255.254".parse().unwrap())
                .unwrap()
                .len()
                <= 15
        );
    }

    #[test]
    fn names_are_distinct_for_disjoint_subnets_and_all_their_nodes() {
        // Every /24 of a /21 pool and every /26 of a /24, all with the most nodes allowed.
        let mut subnets: Vec<Ipv4Net> = n("192.168.56.0/21").subnets(24).unwrap().collect();
        subnets.extend(n("10.20.30.0/24").subnets(26).unwrap());
        let mut seen = std::collections::HashSet::new();
        for s in &subnets {
            assert!(seen.insert(bridge_name(s)), "bridge name of {s} repeats");
            for node in plan_nodes("x", s, 3, 10).unwrap() {
                let v = veth_name(s, node.ip).unwrap();
                assert!(v.len() <= 15);
                assert!(seen.insert(v.clone()), "veth {v} of {s} repeats");
            }
        }
    }

    #[test]
    fn veth_name_refuses_addresses_outside_or_far_into_the_subnet() {
        assert_eq!(
            veth_name(&n("192.168.56.0/24"), "192.168.57.10".parse().unwrap()),
            None
        );
        assert_eq!(
            veth_name(&n("10.0.0.0/16"), "10.0.1.0".parse().unwrap()),
            None
        );
    }

    #[test]
    fn node_suffix_matches_exactly_cp_n_and_worker_n() {
        for ok in ["cp-1", "worker-10", "cp-3"] {
            assert!(is_node_suffix(ok), "{ok}");
        }
        // `acme-worker-cp-1` is node cp-1 of instance `acme-worker`, never a node of `acme`.
        for bad in [
            "worker-cp-1",
            "cp-",
            "cp-1a",
            "worker",
            "db-1",
            "cp-1-x",
            "",
        ] {
            assert!(!is_node_suffix(bad), "{bad}");
        }
    }

    #[test]
    fn planned_ip_follows_the_naming_plan() {
        let s = n("192.168.56.0/24");
        assert_eq!(
            planned_ip(&s, "cp-2"),
            Some("192.168.56.11".parse().unwrap())
        );
        assert_eq!(
            planned_ip(&s, "worker-1"),
            Some("192.168.56.20".parse().unwrap())
        );
        assert_eq!(planned_ip(&s, "worker-0"), None);
    }
}
