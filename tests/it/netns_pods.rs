//! Trait-level tests of the pods of the `netns` backend: real namespaces, each test with a lab
//! host of its own (deleted by a guard, also when the test fails). Pings run only inside the
//! test's own namespaces.

use std::net::Ipv4Addr;

use homelab::backend::netns::{pod_netns, NetnsBackend};
use homelab::backend::{pods, Backend, LabSpec};

use crate::util::netns::{ctl, lab_spec, namespaces_of, netns_inode, ping, ping_all, routes, sh, LabHostGuard, RootNetSnapshot};

fn plan(spec: &LabSpec) -> Vec<pods::NodePods> {
    pods::plan(&spec.instance, &spec.pod_cidr, &spec.nodes, spec.pods_per_node).unwrap()
}

async fn up(b: &dyn Backend, spec: &LabSpec) {
    let status = b.converge(spec, &ctl()).await.expect("converge");
    assert!(status.healthy(), "not healthy after converge: {status:#?}");
}

#[tokio::test]
async fn a_pod_reaches_its_own_nodes_and_pods_and_gets_no_route_to_another_instance() {
    let root_before = RootNetSnapshot::take();
    let guard = LabHostGuard::new();
    let b = NetnsBackend::new(guard.name.clone());
    let acme = lab_spec("acme", "192.168.56.0/24", 1, 1);
    let mut globex = lab_spec("globex", "192.168.57.0/24", 1, 1);
    globex.pod_cidr = "10.245.0.0/16".parse().unwrap();
    up(&b, &acme).await;
    up(&b, &globex).await;
    let (pa, pg) = (plan(&acme), plan(&globex));
    let from = pod_netns(&guard.name, "acme-worker-1", 1);

    // Its own instance: every node and every pod (on its node and on the other) answers.
    let own: Vec<Ipv4Addr> = pa.iter().flat_map(|n| std::iter::once(n.node_ip).chain(n.pods.clone())).collect();
    assert_eq!(own.len(), 4);
    let pairs: Vec<(String, Ipv4Addr)> = own.iter().map(|ip| (from.clone(), *ip)).collect();
    for ((_, ip), (ok, out)) in pairs.iter().zip(ping_all(&pairs).await) {
        assert!(ok, "{from} -> {ip} did not answer: {out}");
    }
    // The other instance: nodes, pods, gateway, first service address: no route at all.
    let mut foreign: Vec<Ipv4Addr> = pg.iter().flat_map(|n| std::iter::once(n.node_ip).chain(n.pods.clone())).collect();
    foreign.push(globex.gateway);
    foreign.push(globex.service_cidr.network());
    for ip in foreign {
        let (ok, out) = ping(&from, ip).await;
        assert!(!ok && out.contains("Network is unreachable"), "{from} -> {ip}: {out}");
    }
    b.teardown(&acme, &ctl()).await.unwrap();
    b.teardown(&globex, &ctl()).await.unwrap();
    assert!(namespaces_of(&guard.name).is_empty(), "{:?}", namespaces_of(&guard.name));
    assert_eq!(RootNetSnapshot::take(), root_before, "the root namespace changed");
}

#[tokio::test]
async fn a_pod_deleted_out_of_band_is_reported_and_rebuilt_leaving_the_others_untouched() {
    let guard = LabHostGuard::new();
    let b = NetnsBackend::new(guard.name.clone());
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 1);
    up(&b, &spec).await;
    let gone = pod_netns(&guard.name, "acme-worker-1", 1);
    let kept = pod_netns(&guard.name, "acme-cp-1", 1);
    let kept_inode = netns_inode(&kept);
    sh(&["ip", "netns", "del", &gone]);

    let status = b.observe(&spec).await.unwrap();
    assert!(!status.healthy(), "{status:#?}");
    let worker = status.nodes.iter().find(|n| n.name == "acme-worker-1").unwrap();
    assert!(worker.state.contains("pod acme-worker-1-pod-1 is missing"), "{worker:?}");
    assert!(status.nodes.iter().find(|n| n.name == "acme-cp-1").unwrap().healthy);

    up(&b, &spec).await;
    assert_eq!(netns_inode(&kept), kept_inode, "a healthy pod was rebuilt");
    let p = plan(&spec);
    let (ok, out) = ping(&gone, p[0].pods[0]).await;
    assert!(ok, "the rebuilt pod does not reach the other node's pod: {out}");
    b.teardown(&spec, &ctl()).await.unwrap();
}

#[tokio::test]
async fn pods_per_node_and_workers_change_in_place_with_routes_following() {
    let guard = LabHostGuard::new();
    let b = NetnsBackend::new(guard.name.clone());
    let mut spec = lab_spec("acme", "192.168.56.0/24", 1, 1);
    up(&b, &spec).await;

    // Two pods per node: the second appears, the first is untouched.
    let first = pod_netns(&guard.name, "acme-cp-1", 1);
    let inode = netns_inode(&first);
    spec.pods_per_node = 2;
    up(&b, &spec).await;
    assert_eq!(netns_inode(&first), inode);
    let p = plan(&spec);
    let (ok, out) = ping(&first, p[1].pods[1]).await;
    assert!(ok, "{out}");

    // A second worker: the others route its slice; its pods answer.
    spec.nodes = homelab::backend::plan_nodes("acme", &spec.subnet, 1, 2).unwrap();
    up(&b, &spec).await;
    let p = plan(&spec);
    let cp = format!("{}-acme-cp-1", guard.name);
    assert!(routes(&cp).contains(&format!("{} via 192.168.56.21 dev eth0", p[2].slice)), "{:?}", routes(&cp));
    let (ok, out) = ping(&first, p[2].pods[0]).await;
    assert!(ok, "{out}");

    // Back to one worker and no pods: its slice route and every pod namespace go.
    spec.nodes = homelab::backend::plan_nodes("acme", &spec.subnet, 1, 1).unwrap();
    spec.pods_per_node = 0;
    up(&b, &spec).await;
    let mut want = vec![format!("{}-acme-cp-1", guard.name), format!("{}-acme-worker-1", guard.name), guard.name.clone()];
    want.sort();
    assert_eq!(namespaces_of(&guard.name), want);
    assert_eq!(routes(&cp), vec!["10.244.3.0/24 via 192.168.56.20 dev eth0".to_string(), "192.168.56.0/24 dev eth0".into()]);
    b.teardown(&spec, &ctl()).await.unwrap();
    assert!(namespaces_of(&guard.name).is_empty());
}
