//! Tests of the host side of the network, on real namespaces each test makes itself: the host
//! networks parser on real `ip -j` output, nftables forwarding between netns instances
//! (exactly the federated pair, no transitivity, drift repaired), and iptables forwarding ahead
//! of libvirt-style REJECT rules. Nothing here touches the root namespace.

use std::net::Ipv4Addr;

use homelab::backend::netns::NetnsBackend;
use homelab::backend::{Backend, LabSpec};
use homelab::hostnet::iptables::IptablesForwarding;
use homelab::hostnet::nft::NftForwarding;
use homelab::hostnet::{host_networks, Forwarding, Link};

use crate::util::netns::{
    ctl, lab_spec, ping_all, sh, sysctl, try_sh, LabHostGuard, RootNetSnapshot,
};

#[tokio::test]
async fn host_networks_parser_reads_real_ip_output_of_a_test_namespace() {
    let guard = LabHostGuard::new();
    let ns = guard.name.as_str();
    sh(&["ip", "netns", "add", ns]);
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    // A veth pair with both ends inside the namespace stands in for a LAN card (this kernel
    // may lack the dummy driver).
    sh(&[
        "ip", "-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    sh(&["ip", "-n", ns, "addr", "add", "10.77.1.2/24", "dev", "lan0"]);
    sh(&["ip", "-n", ns, "link", "set", "lan0", "up"]);
    sh(&["ip", "-n", ns, "link", "set", "lan1", "up"]);
    sh(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "10.78.0.0/16",
        "via",
        "10.77.1.1",
    ]);
    sh(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        "10.77.1.1",
    ]);
    let addr_json = sh(&["ip", "-n", ns, "-j", "-4", "addr", "show"]);
    let route_json = sh(&["ip", "-n", ns, "-j", "-4", "route", "show", "table", "main"]);

    let nets = homelab::hostnet::host::parse_ip_json(&addr_json, &route_json).unwrap();
    let got: Vec<(String, String)> = nets
        .iter()
        .map(|n| (n.cidr.to_string(), n.source.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "127.0.0.0/8".into(),
                "interface lo address 127.0.0.1/8".into()
            ),
            (
                "10.77.1.0/24".into(),
                "interface lan0 address 10.77.1.2/24".into()
            ),
            (
                "10.78.0.0/16".into(),
                "route 10.78.0.0/16 via 10.77.1.1 dev lan0".into()
            ),
        ]
    );
}

#[tokio::test]
async fn host_networks_of_this_process_hold_loopback_and_no_default_route() {
    let nets = host_networks().await.unwrap();
    assert!(
        nets.iter().any(|n| n.cidr.to_string() == "127.0.0.0/8"),
        "{nets:?}"
    );
    assert!(nets.iter().all(|n| n.cidr.prefix_len() > 0), "{nets:?}");
}

/// A lab host with instances built by the netns backend, for forwarding tests.
struct Lab {
    guard: LabHostGuard,
    backend: NetnsBackend,
    specs: Vec<LabSpec>,
}

impl Lab {
    async fn new(instances: &[(&str, &str)]) -> Lab {
        let guard = LabHostGuard::new();
        let backend = NetnsBackend::new(guard.name.clone());
        let mut specs = Vec::new();
        for (name, subnet) in instances {
            let spec = lab_spec(name, subnet, 1, 0);
            assert!(backend.converge(&spec, &ctl()).await.unwrap().healthy());
            specs.push(spec);
        }
        Lab {
            guard,
            backend,
            specs,
        }
    }

    fn link(&self, i: usize) -> Link {
        let s = &self.specs[i];
        Link {
            instance: s.instance.clone(),
            iface: homelab::backend::netns::bridge_name(&s.subnet),
            subnet: s.subnet,
            pod_cidr: None,
        }
    }

    fn cp(&self, i: usize) -> (String, Ipv4Addr) {
        let node = &self.specs[i].nodes[0];
        (format!("{}-{}", self.guard.name, node.name), node.ip)
    }

    /// Routes both ways between instances `i` and `j` in their nodes (what federation adds).
    async fn route(&self, i: usize, j: usize, present: bool) {
        let b: &dyn Backend = &self.backend;
        b.set_guest_route(&self.specs[i], self.specs[j].subnet, present, &ctl())
            .await
            .unwrap();
        b.set_guest_route(&self.specs[j], self.specs[i].subnet, present, &ctl())
            .await
            .unwrap();
    }

    /// Which ordered pairs of instances reach each other (cp-1 to cp-1), all pinged at once.
    async fn matrix(&self) -> Vec<(usize, usize)> {
        let n = self.specs.len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .collect();
        let pings: Vec<(String, Ipv4Addr)> = pairs
            .iter()
            .map(|(i, j)| (self.cp(*i).0, self.cp(*j).1))
            .collect();
        let answers = ping_all(&pings).await;
        pairs
            .into_iter()
            .zip(answers)
            .filter(|(_, (ok, _))| *ok)
            .map(|(p, _)| p)
            .collect()
    }

    async fn teardown(&self) {
        for spec in &self.specs {
            self.backend.teardown(spec, &ctl()).await.unwrap();
        }
    }
}

fn nft_list(host: &str) -> String {
    sh(&[
        "ip", "netns", "exec", host, "nft", "list", "table", "inet", "homelab",
    ])
}

#[tokio::test]
async fn nft_federation_opens_exactly_the_pair_and_is_not_transitive() {
    let root_before = RootNetSnapshot::take();
    let lab = Lab::new(&[
        ("acme", "192.168.56.0/24"),
        ("globex", "192.168.57.0/24"),
        ("initech", "192.168.58.0/24"),
    ])
    .await;
    let (acme, globex, initech) = (0, 1, 2);
    let host = lab.guard.name.clone();
    let fwd: &dyn Forwarding = &NftForwarding::new(host.clone());
    assert!(
        lab.matrix().await.is_empty(),
        "something crosses before any federation"
    );

    // acme+globex: exactly acme <-> globex.
    let lines = fwd
        .allow_pair(&lab.link(acme), &lab.link(globex))
        .await
        .unwrap();
    assert_eq!(
        lines,
        vec![
            format!("netns {host}: nft inet homelab forward: accept hlbc0a83800 -> hlbc0a83900 192.168.56.0/24 -> 192.168.57.0/24"),
            format!("netns {host}: nft inet homelab forward: accept hlbc0a83900 -> hlbc0a83800 192.168.57.0/24 -> 192.168.56.0/24"),
            format!("netns {host}: net.ipv4.ip_forward=1"),
        ]
    );
    lab.route(acme, globex, true).await;
    assert_eq!(lab.matrix().await, vec![(acme, globex), (globex, acme)]);
    // Idempotent: a second allow adds nothing.
    let before = nft_list(&host);
    fwd.allow_pair(&lab.link(globex), &lab.link(acme))
        .await
        .unwrap();
    assert_eq!(nft_list(&host), before);
    assert_eq!(before.matches("homelab:acme+globex").count(), 2, "{before}");

    // globex+initech as well: acme still cannot reach initech, even with routes in place on
    // both sides (as a tenant could add them): the forward chain is the guard, not routing.
    fwd.allow_pair(&lab.link(globex), &lab.link(initech))
        .await
        .unwrap();
    lab.route(globex, initech, true).await;
    lab.route(acme, initech, true).await;
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "1");
    assert_eq!(
        lab.matrix().await,
        vec![
            (acme, globex),
            (globex, acme),
            (globex, initech),
            (initech, globex)
        ]
    );

    // Both pairs closed: nothing crosses, forwarding back off.
    fwd.deny_pair(&lab.link(acme), &lab.link(globex))
        .await
        .unwrap();
    assert_eq!(
        sysctl(&host, "net.ipv4.ip_forward"),
        "1",
        "globex+initech still federated"
    );
    assert_eq!(
        lab.matrix().await,
        vec![(globex, initech), (initech, globex)]
    );
    fwd.deny_pair(&lab.link(globex), &lab.link(initech))
        .await
        .unwrap();
    assert!(lab.matrix().await.is_empty());
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "0");
    let table = nft_list(&host);
    assert!(
        !table.contains("homelab:") && table.contains("policy drop"),
        "{table}"
    );
    // Denying again, or a pair that never was: fine.
    fwd.deny_pair(&lab.link(acme), &lab.link(globex))
        .await
        .unwrap();
    fwd.deny_pair(&lab.link(acme), &lab.link(initech))
        .await
        .unwrap();

    lab.teardown().await;
    assert_eq!(
        RootNetSnapshot::take(),
        root_before,
        "the root namespace changed"
    );
}

#[tokio::test]
async fn nft_table_flushed_out_of_band_is_reported_missing_and_repaired() {
    let lab = Lab::new(&[("acme", "192.168.56.0/24"), ("globex", "192.168.57.0/24")]).await;
    let host = lab.guard.name.clone();
    let fwd: &dyn Forwarding = &NftForwarding::new(host.clone());
    let (a, b) = (lab.link(0), lab.link(1));
    fwd.allow_pair(&a, &b).await.unwrap();
    lab.route(0, 1, true).await;
    assert!(fwd.missing_for_pair(&a, &b).await.unwrap().is_empty());

    // Rules flushed: both directions reported, and nothing crosses.
    sh(&[
        "ip", "netns", "exec", &host, "nft", "flush", "chain", "inet", "homelab", "forward",
    ]);
    let missing = fwd.missing_for_pair(&a, &b).await.unwrap();
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing[0].contains("accept hlbc0a83800 -> hlbc0a83900"),
        "{missing:?}"
    );
    assert!(lab.matrix().await.is_empty());
    fwd.allow_pair(&a, &b).await.unwrap();
    assert!(fwd.missing_for_pair(&a, &b).await.unwrap().is_empty());
    assert_eq!(lab.matrix().await, vec![(0, 1), (1, 0)]);

    // The whole table deleted and forwarding turned off: all of it reported, all repaired.
    sh(&[
        "ip", "netns", "exec", &host, "nft", "delete", "table", "inet", "homelab",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    let missing = fwd.missing_for_pair(&a, &b).await.unwrap();
    assert!(missing[0].contains("table inet homelab"), "{missing:?}");
    assert!(
        missing.iter().any(|m| m.contains("ip_forward")),
        "{missing:?}"
    );
    assert_eq!(missing.len(), 4, "{missing:?}");
    fwd.allow_pair(&a, &b).await.unwrap();
    assert!(fwd.missing_for_pair(&a, &b).await.unwrap().is_empty());
    assert_eq!(lab.matrix().await, vec![(0, 1), (1, 0)]);

    // Someone set the chain policy to accept: reported, and put back to drop.
    sh(&[
        "ip",
        "netns",
        "exec",
        &host,
        "nft",
        "chain",
        "inet",
        "homelab",
        "forward",
        "{ policy accept ; }",
    ]);
    let missing = fwd.missing_for_pair(&a, &b).await.unwrap();
    assert!(
        missing.iter().any(|m| m.contains("policy accept")),
        "{missing:?}"
    );
    fwd.allow_pair(&a, &b).await.unwrap();
    assert!(nft_list(&host).contains("policy drop"));

    fwd.deny_pair(&a, &b).await.unwrap();
    assert!(lab.matrix().await.is_empty());
    lab.teardown().await;
    // Lab host gone altogether: deny still succeeds, missing says why.
    fwd.deny_pair(&a, &b).await.unwrap();
    let missing = fwd.missing_for_pair(&a, &b).await.unwrap();
    assert!(missing[0].contains("does not exist"), "{missing:?}");
}

/// A libvirt-like host in a test namespace: two bridges with one guest each, forwarding REJECT
/// rules as libvirt writes them for isolated networks, and IPv4 forwarding off.
#[tokio::test]
async fn iptables_rules_take_effect_ahead_of_libvirt_style_rejects() {
    if homelab::hostnet::host::find_program("iptables").is_none() {
        panic!("iptables is not installed: apt-get install -y --no-install-recommends iptables");
    }
    let guard = LabHostGuard::new();
    let host = guard.name.clone();
    sh(&["ip", "netns", "add", &host]);
    sh(&["ip", "-n", &host, "link", "set", "lo", "up"]);
    let mut guests = Vec::new();
    for (i, (br, subnet)) in [("virbr1", "192.168.121"), ("virbr2", "192.168.122")]
        .iter()
        .enumerate()
    {
        let guest = format!("{host}-vm{i}");
        sh(&["ip", "netns", "add", &guest]);
        sh(&["ip", "-n", &host, "link", "add", br, "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &host,
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            br,
        ]);
        sh(&["ip", "-n", &host, "link", "set", br, "up"]);
        let port = format!("vnet{i}");
        sh(&[
            "ip", "-n", &host, "link", "add", &port, "up", "master", br, "type", "veth", "peer",
            "name", "eth0", "netns", &guest,
        ]);
        sh(&[
            "ip",
            "-n",
            &guest,
            "addr",
            "add",
            &format!("{subnet}.10/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &guest, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &guest,
            "route",
            "add",
            "default",
            "via",
            &format!("{subnet}.1"),
        ]);
        sh(&[
            "ip", "netns", "exec", &host, "iptables", "-A", "FORWARD", "-i", br, "-j", "REJECT",
        ]);
        sh(&[
            "ip", "netns", "exec", &host, "iptables", "-A", "FORWARD", "-o", br, "-j", "REJECT",
        ]);
        guests.push((guest, format!("{subnet}.10").parse::<Ipv4Addr>().unwrap()));
    }
    sh(&[
        "ip",
        "netns",
        "exec",
        &host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    let pings = [
        (guests[0].0.clone(), guests[1].1),
        (guests[1].0.clone(), guests[0].1),
    ];
    let a = Link {
        instance: "acme".into(),
        iface: "virbr1".into(),
        subnet: "192.168.121.0/24".parse().unwrap(),
        pod_cidr: None,
    };
    let b = Link {
        instance: "globex".into(),
        iface: "virbr2".into(),
        subnet: "192.168.122.0/24".parse().unwrap(),
        pod_cidr: None,
    };
    let fwd: &dyn Forwarding = &IptablesForwarding::new(Some(host.clone()));
    fwd.preflight().await.unwrap();

    assert!(ping_all(&pings).await.iter().all(|(ok, _)| !ok));
    let missing = fwd.missing_for_pair(&a, &b).await.unwrap();
    assert_eq!(missing.len(), 3, "{missing:?}");

    // Even with forwarding on, libvirt's REJECTs stop the traffic: the ACCEPTs must come first.
    sh(&[
        "ip",
        "netns",
        "exec",
        &host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    assert!(ping_all(&pings).await.iter().all(|(ok, _)| !ok));
    sh(&[
        "ip",
        "netns",
        "exec",
        &host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);

    let lines = fwd.allow_pair(&a, &b).await.unwrap();
    assert_eq!(
        lines,
        vec![
            format!("netns {host}: iptables FORWARD: accept virbr1 -> virbr2 192.168.121.0/24 -> 192.168.122.0/24"),
            format!("netns {host}: iptables FORWARD: accept virbr2 -> virbr1 192.168.122.0/24 -> 192.168.121.0/24"),
            format!("netns {host}: net.ipv4.ip_forward=1"),
        ]
    );
    for (ok, out) in ping_all(&pings).await {
        assert!(ok, "federated pair cannot reach each other: {out}");
    }
    assert!(fwd.missing_for_pair(&a, &b).await.unwrap().is_empty());
    fwd.allow_pair(&a, &b).await.unwrap();
    let listing = sh(&["ip", "netns", "exec", &host, "iptables", "-S", "FORWARD"]);
    assert_eq!(
        listing.matches("homelab:acme+globex").count(),
        2,
        "{listing}"
    );
    let first_reject = listing.find("REJECT").unwrap();
    assert!(
        listing.rfind("homelab:acme+globex").unwrap() < first_reject,
        "{listing}"
    );

    // A rule pushed behind the REJECTs (libvirt re-inserting its own at the top) is missing,
    // and allow moves it up again.
    sh(&[
        "ip", "netns", "exec", &host, "iptables", "-I", "FORWARD", "1", "-i", "virbr2", "-j",
        "REJECT",
    ]);
    let missing = fwd.missing_for_pair(&a, &b).await.unwrap();
    assert_eq!(missing.len(), 2, "{missing:?}");
    fwd.allow_pair(&a, &b).await.unwrap();
    assert!(fwd.missing_for_pair(&a, &b).await.unwrap().is_empty());
    for (ok, out) in ping_all(&pings).await {
        assert!(ok, "{out}");
    }

    // Closed again; forwarding, which we turned on, goes back off.
    fwd.deny_pair(&a, &b).await.unwrap();
    fwd.deny_pair(&a, &b).await.unwrap();
    assert!(ping_all(&pings).await.iter().all(|(ok, _)| !ok));
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "0");
    let (_, listing) = try_sh(&["ip", "netns", "exec", &host, "iptables", "-S", "FORWARD"]);
    assert!(!listing.contains("homelab:"), "{listing}");
}

#[tokio::test]
async fn iptables_leaves_forwarding_on_when_it_was_on_before() {
    let guard = LabHostGuard::new();
    let host = guard.name.clone();
    sh(&["ip", "netns", "add", &host]);
    // As on a libvirt host with NAT networks: forwarding already on.
    sh(&[
        "ip",
        "netns",
        "exec",
        &host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let a = Link {
        instance: "a".into(),
        iface: "virbr1".into(),
        subnet: "192.168.121.0/24".parse().unwrap(),
        pod_cidr: None,
    };
    let b = Link {
        instance: "b".into(),
        iface: "virbr2".into(),
        subnet: "192.168.122.0/24".parse().unwrap(),
        pod_cidr: None,
    };
    let fwd = IptablesForwarding::new(Some(host.clone()));
    fwd.allow_pair(&a, &b).await.unwrap();
    fwd.deny_pair(&a, &b).await.unwrap();
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "1");
}
