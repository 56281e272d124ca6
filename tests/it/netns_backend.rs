//! Trait-level tests of the `netns` backend: `NetnsBackend` called through `&dyn Backend`, on
//! real network namespaces, each test with a lab host of its own (deleted by a guard, also when
//! the test fails). Needs root, like the backend itself.

use std::time::Duration;

use homelab::backend::netns::{bridge_name, veth_name, NetnsBackend};
use homelab::backend::{Backend, BackendError, LabSpec, OpControl};

use crate::util::netns::{
    addrs, ctl, is_up, lab_spec, link, links, namespaces_of, netns_exists, netns_inode, ping,
    ping_all, routes, sh, sysctl, LabHostGuard, RootNetSnapshot,
};

fn backend(guard: &LabHostGuard) -> Box<dyn Backend> {
    Box::new(NetnsBackend::new(guard.name.clone()))
}

fn node_ns(guard: &LabHostGuard, node: &str) -> String {
    format!("{}-{node}", guard.name)
}

async fn up(b: &dyn Backend, spec: &LabSpec) {
    let status = b.converge(spec, &ctl()).await.expect("converge");
    assert!(status.healthy(), "not healthy after converge: {status:#?}");
}

#[tokio::test]
async fn bring_up_of_three_nodes_builds_namespaces_bridge_addresses_pods_and_only_instance_routes() {
    let root_before = RootNetSnapshot::take();
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 2);
    up(b.as_ref(), &spec).await;

    let host = &guard.name;
    let br = bridge_name(&spec.subnet);
    assert_eq!(br, "hlbc0a83800");
    assert_eq!(link(host, &br).unwrap()["linkinfo"]["info_kind"], "bridge");
    assert!(is_up(host, &br));
    assert_eq!(addrs(host, &br), vec!["192.168.56.1/24"]);

    let mut expected_ns = vec![host.clone()];
    // Slices of 10.244.0.0/16 by place in the naming plan: cp-1 0, worker-1 3, worker-2 4.
    let nodes = [
        ("acme-cp-1", "192.168.56.10", 0),
        ("acme-worker-1", "192.168.56.20", 3),
        ("acme-worker-2", "192.168.56.21", 4),
    ];
    for (node, ip, slice) in nodes {
        let ns = node_ns(&guard, node);
        expected_ns.push(ns.clone());
        assert_eq!(links(&ns), vec!["eth0", "lo", "pod1"], "{ns}");
        assert!(is_up(&ns, "lo") && is_up(&ns, "eth0") && is_up(&ns, "pod1"), "{ns}");
        assert_eq!(addrs(&ns, "eth0"), vec![format!("{ip}/24")]);
        assert_eq!(addrs(&ns, "pod1"), vec![format!("10.244.{slice}.1/32")]);
        // No default route: its own /24, the other nodes' pod slices via them, its own pod.
        let mut want = vec!["192.168.56.0/24 dev eth0".to_string(), format!("10.244.{slice}.2 dev pod1")];
        for (_, other_ip, other_slice) in nodes.iter().filter(|(n, ..)| *n != node) {
            want.push(format!("10.244.{other_slice}.0/24 via {other_ip} dev eth0"));
        }
        want.sort();
        assert_eq!(routes(&ns), want, "{ns}");
        assert_eq!(sysctl(&ns, "net.ipv4.ip_forward"), "1", "{ns} forwards for its pods");
        // Its pod: one /32, and routes to its own instance only, via its node.
        let pod = format!("{ns}-pod-1");
        expected_ns.push(pod.clone());
        assert_eq!(links(&pod), vec!["eth0", "lo"], "{pod}");
        assert_eq!(addrs(&pod, "eth0"), vec![format!("10.244.{slice}.2/32")]);
        let mut want = vec![
            format!("10.244.{slice}.1 dev eth0"),
            format!("192.168.56.0/24 via 10.244.{slice}.1 dev eth0"),
            format!("10.244.0.0/16 via 10.244.{slice}.1 dev eth0"),
        ];
        want.sort();
        assert_eq!(routes(&pod), want, "{pod}");
        let veth = veth_name(&spec.subnet, ip.parse().unwrap()).unwrap();
        let host_end = link(host, &veth).unwrap_or_else(|| panic!("no {veth} in {host}"));
        assert_eq!(host_end["master"], br.as_str());
        assert!(is_up(host, &veth));
    }
    expected_ns.sort();
    assert_eq!(namespaces_of(host), expected_ns);
    // The lab host: forwarding off, and the provider's drop-policy forward chain in place.
    assert_eq!(sysctl(host, "net.ipv4.ip_forward"), "0");
    let chain = sh(&[
        "ip", "netns", "exec", host, "nft", "list", "chain", "inet", "homelab", "forward",
    ]);
    assert!(chain.contains("policy drop"), "{chain}");

    b.teardown(&spec, &ctl()).await.unwrap();
    assert_eq!(
        RootNetSnapshot::take(),
        root_before,
        "the root namespace changed"
    );
}

#[tokio::test]
async fn nodes_reach_their_gateway_and_each_other_but_nothing_else() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 1);
    up(b.as_ref(), &spec).await;
    let cp = node_ns(&guard, "acme-cp-1");
    let answers = ping_all(&[
        (cp.clone(), spec.gateway),
        (cp.clone(), "192.168.56.20".parse().unwrap()),
        (
            node_ns(&guard, "acme-worker-1"),
            "192.168.56.10".parse().unwrap(),
        ),
    ])
    .await;
    for (ok, out) in &answers {
        assert!(ok, "ping inside the instance failed: {out}");
    }
    // Nothing beyond the subnet: no route, so the kernel refuses at once.
    let (ok, out) = ping(&cp, "8.8.8.8".parse().unwrap()).await;
    assert!(!ok && out.contains("Network is unreachable"), "{out}");
    b.teardown(&spec, &ctl()).await.unwrap();
}

/// The seed's audit test: two instances side by side in one lab host cannot reach each other.
#[tokio::test]
async fn two_instances_in_one_lab_host_cannot_reach_each_other() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let acme = lab_spec("acme", "192.168.56.0/24", 1, 0);
    let globex = lab_spec("globex", "192.168.57.0/24", 1, 0);
    up(b.as_ref(), &acme).await;
    up(b.as_ref(), &globex).await;
    let acme_cp = node_ns(&guard, "acme-cp-1");
    let (ok, out) = ping(&acme_cp, "192.168.57.10".parse().unwrap()).await;
    assert!(!ok, "acme reached globex: {out}");
    assert!(out.contains("Network is unreachable"), "{out}");
    let (ok, out) = ping(&acme_cp, acme.gateway).await;
    assert!(ok, "acme cannot reach its own gateway: {out}");
    // Not even globex's gateway on the shared lab host.
    let (ok, out) = ping(&acme_cp, globex.gateway).await;
    assert!(!ok && out.contains("Network is unreachable"), "{out}");
    b.teardown(&acme, &ctl()).await.unwrap();
    b.teardown(&globex, &ctl()).await.unwrap();
}

#[tokio::test]
async fn scaling_workers_2_3_1_leaves_untouched_nodes_untouched() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    up(b.as_ref(), &lab_spec("acme", "192.168.56.0/24", 1, 2)).await;
    let cp = node_ns(&guard, "acme-cp-1");
    let w1 = node_ns(&guard, "acme-worker-1");
    let w2 = node_ns(&guard, "acme-worker-2");
    // Markers: the namespace inode, and an alias on eth0 that a re-created node would not have.
    let inodes = [netns_inode(&cp), netns_inode(&w1), netns_inode(&w2)];
    for ns in [&cp, &w1, &w2] {
        sh(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            "eth0",
            "alias",
            "marker-untouched",
        ]);
    }
    let alias = |ns: &str| {
        link(ns, "eth0").unwrap()["ifalias"]
            .as_str()
            .map(String::from)
    };

    // 2 → 3: worker-3 appears, the others keep their namespace and marker.
    up(b.as_ref(), &lab_spec("acme", "192.168.56.0/24", 1, 3)).await;
    let w3 = node_ns(&guard, "acme-worker-3");
    assert_eq!(addrs(&w3, "eth0"), vec!["192.168.56.22/24"]);
    assert_eq!(
        [netns_inode(&cp), netns_inode(&w1), netns_inode(&w2)],
        inodes
    );
    for ns in [&cp, &w1, &w2] {
        assert_eq!(
            alias(ns).as_deref(),
            Some("marker-untouched"),
            "{ns} was touched"
        );
    }

    // 3 → 1: worker-2 and worker-3 go with their veths; cp-1 and worker-1 stay as they were.
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 1);
    let status = b.converge(&spec, &ctl()).await.unwrap();
    assert!(status.healthy(), "{status:#?}");
    assert!(!netns_exists(&w2) && !netns_exists(&w3));
    for gone in ["192.168.56.21", "192.168.56.22"] {
        let v = veth_name(&spec.subnet, gone.parse().unwrap()).unwrap();
        assert!(link(&guard.name, &v).is_none(), "{v} left behind");
    }
    assert_eq!([netns_inode(&cp), netns_inode(&w1)], [inodes[0], inodes[1]]);
    assert_eq!(alias(&cp).as_deref(), Some("marker-untouched"));
    assert_eq!(alias(&w1).as_deref(), Some("marker-untouched"));
    b.teardown(&spec, &ctl()).await.unwrap();
}

#[tokio::test]
async fn instance_never_claims_the_nodes_of_an_instance_whose_name_extends_its_own() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let acme = lab_spec("acme", "192.168.56.0/24", 1, 0);
    let acme_worker = lab_spec("acme-worker", "192.168.57.0/24", 1, 1);
    up(b.as_ref(), &acme_worker).await;
    up(b.as_ref(), &acme).await;
    let status = b.observe(&acme).await.unwrap();
    assert!(status.extra_nodes.is_empty(), "{status:#?}");
    assert!(status.healthy());
    // Tearing acme down leaves acme-worker whole.
    b.teardown(&acme, &ctl()).await.unwrap();
    assert!(b.observe(&acme_worker).await.unwrap().healthy());
    assert!(netns_exists(&node_ns(&guard, "acme-worker-cp-1")));
    assert!(netns_exists(&node_ns(&guard, "acme-worker-worker-1")));
    b.teardown(&acme_worker, &ctl()).await.unwrap();
}

#[tokio::test]
async fn out_of_band_damage_is_reported_by_observe_and_repaired_by_converge() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 2);
    up(b.as_ref(), &spec).await;
    let host = guard.name.clone();
    let cp = node_ns(&guard, "acme-cp-1");
    let w1 = node_ns(&guard, "acme-worker-1");
    let w2 = node_ns(&guard, "acme-worker-2");
    let w1_inode = netns_inode(&w1);

    // One node namespace deleted, one node's address removed, another's eth0 down, and the
    // bridge's gateway address removed.
    sh(&["ip", "netns", "del", &cp]);
    sh(&[
        "ip",
        "-n",
        &w1,
        "addr",
        "del",
        "192.168.56.20/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &w2, "link", "set", "eth0", "down"]);
    sh(&["ip", "-n", &host, "addr", "flush", "dev", "hlbc0a83800"]);

    let status = b.observe(&spec).await.unwrap();
    assert!(status.exists && !status.healthy());
    assert_eq!(status.nodes[0].state, "missing");
    assert!(!status.nodes[0].healthy);
    assert!(
        status.nodes[1].state.starts_with("broken: ")
            && status.nodes[1]
                .state
                .contains("eth0 has no address 192.168.56.20/24"),
        "{:?}",
        status.nodes[1]
    );
    assert!(
        status.nodes[2].state.contains("eth0 is down"),
        "{:?}",
        status.nodes[2]
    );
    assert!(
        status
            .problems
            .iter()
            .any(|p| p == "bridge hlbc0a83800 has no address 192.168.56.1/24"),
        "{:?}",
        status.problems
    );
    assert_eq!(status.summary(), "missing");

    let status = b.converge(&spec, &ctl()).await.unwrap();
    assert!(status.healthy(), "{status:#?}");
    assert_eq!(
        netns_inode(&w1),
        w1_inode,
        "a broken node is repaired in place, not re-created"
    );
    let (ok, out) = ping(&cp, spec.gateway).await;
    assert!(ok, "re-created node cannot reach its gateway: {out}");
    let (ok, out) = ping(&w2, "192.168.56.20".parse().unwrap()).await;
    assert!(ok, "repaired nodes cannot reach each other: {out}");
    b.teardown(&spec, &ctl()).await.unwrap();
}

#[tokio::test]
async fn node_with_half_a_veth_is_rewired() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 0);
    up(b.as_ref(), &spec).await;
    let cp = node_ns(&guard, "acme-cp-1");
    // Deleting the node end kills the pair; put a lone interface named eth0 in its place.
    sh(&["ip", "-n", &cp, "link", "del", "eth0"]);
    sh(&["ip", "-n", &cp, "link", "add", "eth0", "type", "bridge"]);
    let status = b.observe(&spec).await.unwrap();
    assert!(
        status.nodes[0]
            .state
            .contains("veth hlvc0a838000a is missing"),
        "{status:#?}"
    );
    up(b.as_ref(), &spec).await;
    assert_eq!(link(&cp, "eth0").unwrap()["linkinfo"]["info_kind"], "veth");
    let (ok, out) = ping(&cp, spec.gateway).await;
    assert!(ok, "{out}");
    b.teardown(&spec, &ctl()).await.unwrap();
}

#[tokio::test]
async fn teardown_removes_every_namespace_and_interface_and_finally_the_lab_host() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let host = guard.name.clone();
    let acme = lab_spec("acme", "192.168.56.0/24", 1, 2);
    let globex = lab_spec("globex", "192.168.57.0/24", 1, 0);
    up(b.as_ref(), &acme).await;
    up(b.as_ref(), &globex).await;

    b.teardown(&acme, &ctl()).await.unwrap();
    // acme is gone to the last interface; the lab host stays for globex.
    assert_eq!(namespaces_of(&host), {
        let mut v = vec![host.clone(), node_ns(&guard, "globex-cp-1"), node_ns(&guard, "globex-cp-1-pod-1")];
        v.sort();
        v
    });
    assert_eq!(links(&host), vec!["hlbc0a83900", "hlvc0a839000a", "lo"]);
    let status = b.observe(&acme).await.unwrap();
    assert!(!status.exists, "{status:#?}");
    assert!(b.observe(&globex).await.unwrap().healthy());

    b.teardown(&globex, &ctl()).await.unwrap();
    assert!(
        namespaces_of(&host).is_empty(),
        "{:?}",
        namespaces_of(&host)
    );
    // Already gone: still a success.
    b.teardown(&globex, &ctl()).await.unwrap();
    b.teardown(&acme, &ctl()).await.unwrap();
    assert!(!b.observe(&globex).await.unwrap().exists);
}

#[tokio::test]
async fn converge_and_teardown_are_idempotent() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 2, 1);
    let first = b.converge(&spec, &ctl()).await.unwrap();
    let inodes: Vec<u64> = spec
        .nodes
        .iter()
        .map(|n| netns_inode(&node_ns(&guard, &n.name)))
        .collect();
    let host_links = links(&guard.name);
    let second = b.converge(&spec, &ctl()).await.unwrap();
    assert_eq!(first, second);
    assert!(second.healthy());
    let again: Vec<u64> = spec
        .nodes
        .iter()
        .map(|n| netns_inode(&node_ns(&guard, &n.name)))
        .collect();
    assert_eq!(inodes, again);
    assert_eq!(links(&guard.name), host_links);
    b.teardown(&spec, &ctl()).await.unwrap();
    b.teardown(&spec, &ctl()).await.unwrap();
    assert!(namespaces_of(&guard.name).is_empty());
}

#[tokio::test]
async fn interrupted_create_stops_and_a_rerun_completes_the_half_made_lab() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 2);

    // Terraform's stop signal already given: nothing is started.
    let stopped = OpControl::with_timeout(Duration::from_secs(60));
    stopped.cancel.cancel();
    let err = b.converge(&spec, &stopped).await.unwrap_err();
    assert!(matches!(err, BackendError::Cancelled { .. }), "{err}");

    // A half-made lab, as a crash would leave it: the bridge and one node only.
    up(b.as_ref(), &lab_spec("acme", "192.168.56.0/24", 1, 0)).await;
    sh(&["ip", "netns", "add", &node_ns(&guard, "acme-worker-1")]);
    let status = b.observe(&spec).await.unwrap();
    assert!(status.exists && !status.healthy());

    // A deadline already passed stops with a timeout naming the step.
    let err = b
        .converge(&spec, &OpControl::with_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");

    // The re-run finishes the job.
    up(b.as_ref(), &spec).await;
    let (ok, out) = ping(
        &node_ns(&guard, "acme-worker-2"),
        "192.168.56.20".parse().unwrap(),
    )
    .await;
    assert!(ok, "{out}");
    b.teardown(&spec, &ctl()).await.unwrap();
}

#[tokio::test]
async fn observe_of_a_lab_that_was_never_made_says_it_does_not_exist() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 1);
    let status = b.observe(&spec).await.unwrap();
    assert!(!status.exists);
    assert_eq!(status.summary(), "absent");
    assert!(status
        .nodes
        .iter()
        .all(|n| n.state == "missing" && !n.healthy));
    assert!(
        namespaces_of(&guard.name).is_empty(),
        "observe created something"
    );
    let err = b.host_interface(&spec).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn guest_routes_are_added_listed_and_removed_idempotently() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 1);
    up(b.as_ref(), &spec).await;
    assert!(b.guest_routes(&spec).await.unwrap().is_empty());
    let dest = "192.168.57.0/24".parse().unwrap();
    for _ in 0..2 {
        b.set_guest_route(&spec, dest, true, &ctl()).await.unwrap();
    }
    // Every node via the gateway, every pod via its node.
    assert_eq!(
        b.guest_routes(&spec).await.unwrap(),
        vec![
            ("acme-cp-1".to_string(), dest),
            ("acme-cp-1-pod-1".to_string(), dest),
            ("acme-worker-1".to_string(), dest),
            ("acme-worker-1-pod-1".to_string(), dest)
        ]
    );
    assert!(routes(&node_ns(&guard, "acme-cp-1"))
        .contains(&"192.168.57.0/24 via 192.168.56.1 dev eth0".to_string()));
    assert!(routes(&node_ns(&guard, "acme-worker-1-pod-1"))
        .contains(&"192.168.57.0/24 via 10.244.3.1 dev eth0".to_string()));
    // A route added out of band (a default route) is reported too: drift.
    sh(&[
        "ip",
        "-n",
        &node_ns(&guard, "acme-worker-1"),
        "route",
        "add",
        "default",
        "via",
        "192.168.56.1",
    ]);
    assert!(b
        .guest_routes(&spec)
        .await
        .unwrap()
        .contains(&("acme-worker-1".to_string(), "0.0.0.0/0".parse().unwrap())));
    for _ in 0..2 {
        b.set_guest_route(&spec, dest, false, &ctl()).await.unwrap();
    }
    assert_eq!(
        b.guest_routes(&spec).await.unwrap(),
        vec![("acme-worker-1".to_string(), "0.0.0.0/0".parse().unwrap())]
    );
    b.teardown(&spec, &ctl()).await.unwrap();
    // Nodes gone: removing routes is still a success.
    b.set_guest_route(&spec, dest, false, &ctl()).await.unwrap();
}

#[tokio::test]
async fn host_interface_is_the_bridge_and_preflight_passes_as_root() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    b.preflight().await.expect("preflight as root");
    assert_eq!(b.name(), "netns");
    let spec = lab_spec("acme", "192.168.56.0/24", 1, 0);
    up(b.as_ref(), &spec).await;
    assert_eq!(b.host_interface(&spec).await.unwrap(), "hlbc0a83800");
    b.forwarding()
        .preflight()
        .await
        .expect("nft preflight as root");
    b.teardown(&spec, &ctl()).await.unwrap();
}

/// Several provider processes converge different instances of one lab host at once, and one
/// tears its instance down meanwhile: the lab host lock keeps every lab whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_converges_of_different_instances_share_one_lab_host() {
    let guard = LabHostGuard::new();
    let specs: Vec<LabSpec> = (0..4)
        .map(|i| {
            lab_spec(
                &format!("inst{i}"),
                &format!("192.168.{}.0/24", 60 + i),
                1,
                1,
            )
        })
        .collect();
    // The first instance alone, so that its teardown below may find itself the last one.
    NetnsBackend::new(guard.name.clone())
        .converge(&specs[0], &ctl())
        .await
        .unwrap();
    // It goes while the three others are created.
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in specs.clone().into_iter().enumerate() {
        let b = NetnsBackend::new(guard.name.clone());
        set.spawn(async move {
            if i == 0 {
                b.teardown(&spec, &ctl()).await.map(|_| None)
            } else {
                b.converge(&spec, &ctl()).await.map(Some)
            }
        });
    }
    while let Some(r) = set.join_next().await {
        if let Some(status) = r.unwrap().unwrap() {
            assert!(status.healthy(), "{status:#?}");
        }
    }
    let b = NetnsBackend::new(guard.name.clone());
    for spec in &specs[1..] {
        b.teardown(spec, &ctl()).await.unwrap();
    }
    assert!(namespaces_of(&guard.name).is_empty());
}

/// Runs the test binary again, as root but without CAP_NET_ADMIN (dropped from the bounding
/// set by `setpriv`), on [`preflight_child_without_cap_net_admin`]: plan-time preflight must
/// refuse and say how to run it.
#[test]
fn preflight_without_cap_net_admin_says_what_is_missing_and_how_to_run() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-net_admin",
            "--",
        ])
        .arg(exe)
        .args([
            "--exact",
            "netns_backend::preflight_child_without_cap_net_admin",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOMELAB_PREFLIGHT_CHILD", "1")
        .output()
        .expect("setpriv (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed: {text}");
    assert!(
        text.contains("1 passed"),
        "the child test did not run: {text}"
    );
}

/// Only meaningful under the test above (it fails when run with CAP_NET_ADMIN, on purpose).
#[tokio::test]
#[ignore = "run by preflight_without_cap_net_admin_says_what_is_missing_and_how_to_run"]
async fn preflight_child_without_cap_net_admin() {
    assert_eq!(std::env::var("HOMELAB_PREFLIGHT_CHILD").as_deref(), Ok("1"));
    let b: Box<dyn Backend> = Box::new(NetnsBackend::new("homelab-never-created"));
    let err = b.preflight().await.unwrap_err();
    let BackendError::Unavailable { what, fix } = &err else {
        panic!("expected Unavailable, got {err:?}")
    };
    assert!(what.contains("CAP_NET_ADMIN"), "{what}");
    assert!(fix.contains("sudo -E terraform apply"), "{fix}");
    let err = b.forwarding().preflight().await.unwrap_err();
    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
}

/// A Linux bridge without an address of its own takes its lowest port's: adding a node could
/// change the gateway's address under the other nodes' ARP caches (traffic through the gateway,
/// as a federation's, then stalls). The bridge keeps its fixed address through scaling.
#[tokio::test]
async fn the_gateway_keeps_its_link_layer_address_when_nodes_are_added() {
    let guard = LabHostGuard::new();
    let b = backend(&guard);
    let mut spec = lab_spec("acme", "192.168.56.0/24", 1, 0);
    up(b.as_ref(), &spec).await;
    let br = bridge_name(&spec.subnet);
    let mac = |host: &str| link(host, &br).unwrap()["address"].as_str().unwrap().to_string();
    assert_eq!(mac(&guard.name), homelab::backend::netns::bridge_mac(&spec.subnet));
    for workers in 1..=6 {
        spec.nodes = homelab::backend::plan_nodes("acme", &spec.subnet, 1, workers).unwrap();
        up(b.as_ref(), &spec).await;
        assert_eq!(mac(&guard.name), "02:68:c0:a8:38:00", "after adding worker-{workers}");
    }
    b.teardown(&spec, &ctl()).await.unwrap();
}
