//! Trait-level tests of `reachability::probe` on real namespaces: three `netns` instances of two
//! nodes and one pod each, in a lab host of the test's own (deleted by a guard, also when the
//! test fails). Probes run in-process inside those namespaces only.

use std::sync::Arc;

use homelab::backend::netns::NetnsBackend;
use homelab::backend::{Backend, LabSpec};
use homelab::hostnet::{Forwarding, Link};
use homelab::reachability::{self, Lab, Options};

use crate::util::netns::{ctl, lab_spec, sh, LabHostGuard, RootNetSnapshot};

/// acme, globex, initech: 1 control plane + 1 worker, one pod each, disjoint networks.
fn specs() -> Vec<LabSpec> {
    ["acme", "globex", "initech"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut s = lab_spec(n, &format!("192.168.{}.0/24", 56 + i), 1, 1);
            s.pod_cidr = format!("10.{}.0.0/16", 244 + i).parse().unwrap();
            s.service_cidr = format!("10.{}.0.0/16", 96 + i).parse().unwrap();
            s
        })
        .collect()
}

async fn lab_up(guard: &LabHostGuard) -> (Arc<NetnsBackend>, Vec<LabSpec>) {
    let b = Arc::new(NetnsBackend::new(guard.name.clone()));
    let specs = specs();
    for s in &specs {
        assert!(b.converge(s, &ctl()).await.unwrap().healthy());
    }
    (b, specs)
}

fn labs(b: &Arc<NetnsBackend>, specs: &[LabSpec], federated: &[(&str, &str)]) -> Vec<Lab> {
    specs
        .iter()
        .map(|s| Lab {
            spec: s.clone(),
            backend: b.clone(),
            federated: federated
                .iter()
                .filter_map(|(a, c)| match s.instance.as_str() {
                    x if x == *a => Some(c.to_string()),
                    x if x == *c => Some(a.to_string()),
                    _ => None,
                })
                .collect(),
        })
        .collect()
}

#[tokio::test]
async fn an_isolated_lab_answers_only_inside_each_instance_and_everything_else_has_no_route() {
    let root_before = RootNetSnapshot::take();
    let guard = LabHostGuard::new();
    let (b, specs) = lab_up(&guard).await;
    let m = reachability::probe(&labs(&b, &specs, &[]), None, Options::default()).await.unwrap();
    // 12 sources (2 nodes + 2 pods of 3 instances), each 3 own guests + 2 x 6 foreign addresses.
    assert_eq!(m.rows.len(), 12 * 15);
    assert!(m.foreign_reachable.is_empty(), "{:#?}", m.foreign_reachable);
    assert!(m.federated_reachable.is_empty());
    for r in &m.rows {
        if r.to == r.from_instance {
            assert!(r.reachable, "{r:?}");
        } else {
            assert!(!r.reachable && reachability::is_no_route(&r.reason), "{r:?}");
        }
    }
    // Every kind of target is there, for every other instance.
    let from_pod: Vec<&str> = m.rows.iter().filter(|r| r.from == "acme-cp-1-pod-1" && r.to == "globex").map(|r| r.target_name.as_str()).collect();
    assert_eq!(from_pod, vec!["service", "globex-cp-1-pod-1", "globex-worker-1-pod-1", "gateway", "globex-cp-1", "globex-worker-1"]);
    // One instance as the only source.
    let only = reachability::probe(&labs(&b, &specs, &[]), Some("globex"), Options::default()).await.unwrap();
    assert!(only.rows.iter().all(|r| r.from_instance == "globex") && only.rows.len() == 4 * 15);
    let err = reachability::probe(&labs(&b, &specs, &[]), Some("nobody"), Options::default()).await.unwrap_err();
    assert!(err.to_string().contains("acme, globex, initech"), "{err}");
    for s in &specs {
        b.teardown(s, &ctl()).await.unwrap();
    }
    assert_eq!(RootNetSnapshot::take(), root_before, "the root namespace changed");
}

#[tokio::test]
async fn a_federation_shows_as_federated_and_a_path_opened_by_hand_as_foreign_naming_the_address() {
    let guard = LabHostGuard::new();
    let (b, specs) = lab_up(&guard).await;
    // acme+globex federated the provider's way (host forwarding, host pod routes, guest routes).
    let link = |s: &LabSpec| Link {
        instance: s.instance.clone(),
        iface: homelab::backend::netns::bridge_name(&s.subnet),
        subnet: s.subnet,
        pod_cidr: Some(s.pod_cidr),
    };
    let (a, g) = (&specs[0], &specs[1]);
    b.nft().allow_pair(&link(a), &link(g)).await.unwrap();
    for (me, peer) in [(a, g), (g, a)] {
        b.set_host_pod_routes(me, true, &ctl()).await.unwrap();
        for dest in [peer.subnet, peer.pod_cidr] {
            b.set_guest_route(me, dest, true, &ctl()).await.unwrap();
        }
    }
    let m = reachability::probe(&labs(&b, &specs, &[("acme", "globex")]), None, Options::default()).await.unwrap();
    assert!(m.foreign_reachable.is_empty(), "{:#?}", m.foreign_reachable);
    // Both ways, nodes and pods (4 x 4 each way), plus each side's view of the other's gateway.
    let guests = m.rows.iter().filter(|r| r.federated && r.reachable && r.target_name != "gateway").count();
    assert_eq!(guests, 2 * 4 * 4, "{:#?}", m.federated_reachable);
    assert!(m.rows.iter().filter(|r| r.federated && r.target_name == "service").all(|r| !r.reachable));

    // Out of band, in the lab host: forwarding between acme and initech, and a route each way
    // in one node of each: the probe names exactly that path.
    let (host, i) = (&guard.name, &specs[2]);
    let (abr, ibr) = (homelab::backend::netns::bridge_name(&a.subnet), homelab::backend::netns::bridge_name(&i.subnet));
    sh(&["ip", "netns", "exec", host, "nft", "insert", "rule", "inet", "homelab", "forward", "iifname", &abr, "oifname", &ibr, "accept"]);
    sh(&["ip", "netns", "exec", host, "nft", "insert", "rule", "inet", "homelab", "forward", "iifname", &ibr, "oifname", &abr, "accept"]);
    sh(&["ip", "-n", &format!("{host}-acme-cp-1"), "route", "add", &i.subnet.to_string(), "via", &a.gateway.to_string()]);
    sh(&["ip", "-n", &format!("{host}-initech-cp-1"), "route", "add", &a.subnet.to_string(), "via", &i.gateway.to_string()]);
    let m = reachability::probe(&labs(&b, &specs, &[("acme", "globex")]), None, Options::default()).await.unwrap();
    assert_eq!(
        m.foreign_reachable,
        vec![
            "192.168.58.1 (gateway of initech) from acme-cp-1",
            "192.168.58.10 (initech-cp-1 of initech) from acme-cp-1",
            "192.168.56.1 (gateway of acme) from initech-cp-1",
            "192.168.56.10 (acme-cp-1 of acme) from initech-cp-1",
        ],
        "{:#?}",
        m.rows.iter().filter(|r| r.reachable && !r.federated && r.to != r.from_instance).collect::<Vec<_>>()
    );
    for s in &specs {
        b.teardown(s, &ctl()).await.unwrap();
    }
}
