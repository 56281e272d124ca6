//! The seed's audit test, from inside a pod, through the real Terraform CLI on the `netns`
//! backend: three instances; from every pod of each, every address of the others (nodes, pods,
//! gateway, the first address of the service CIDR) gets "Network is unreachable" (no route, not
//! a firewall's silence), and its own instance's nodes and pods answer. With a federation, exactly
//! the federated pair's nodes and pods answer each other, both ways. Pings run only inside the
//! namespaces of the test's own lab host.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::acceptance;
use crate::util::netns::{namespaces_of, ping_all, LabHostGuard};
use crate::util::terraform::Workdir;

const NAMES: [&str; 3] = ["acme", "globex", "initech"];

/// One instance as the state shows it: guests (nodes and pods) by name, and its other addresses.
struct Instance {
    nodes: Vec<(String, Ipv4Addr)>,
    pods: Vec<(String, Ipv4Addr)>,
    gateway: Ipv4Addr,
    service: Ipv4Addr,
}

impl Instance {
    fn guests(&self) -> impl Iterator<Item = &(String, Ipv4Addr)> {
        self.nodes.iter().chain(&self.pods)
    }
}

struct Audit {
    home: tempfile::TempDir,
    host: LabHostGuard,
}

impl Audit {
    fn new() -> Audit {
        Audit {
            home: tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap(),
            host: LabHostGuard::new(),
        }
    }

    fn config(&self, federated: bool) -> String {
        let mut c = format!(
            "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n}}\n",
            self.home.path().display(),
            self.host.name
        );
        for n in NAMES {
            c.push_str(&format!("resource \"homelab_instance\" \"{n}\" {{\n  name = \"{n}\"\n  workers = 1\n}}\n"));
        }
        if federated {
            c.push_str("resource \"homelab_federation\" \"acme_globex\" {\n  instances = [homelab_instance.acme.name, homelab_instance.globex.name]\n  reason = \"audit test\"\n}\n");
        }
        c
    }

    fn instances(&self, w: &Workdir) -> BTreeMap<String, Instance> {
        NAMES
            .iter()
            .map(|n| {
                let s = w.resource(&format!("homelab_instance.{n}")).unwrap();
                let ip = |v: &serde_json::Value| v.as_str().unwrap().parse::<Ipv4Addr>().unwrap();
                let mut nodes = Vec::new();
                let mut pods = Vec::new();
                for node in s["nodes"].as_array().unwrap() {
                    let name = node["name"].as_str().unwrap();
                    nodes.push((name.to_string(), ip(&node["ip"])));
                    for (k, p) in node["pods"].as_array().unwrap().iter().enumerate() {
                        pods.push((format!("{name}-pod-{}", k + 1), ip(p)));
                    }
                }
                let service: ipnet::Ipv4Net = s["service_cidr"].as_str().unwrap().parse().unwrap();
                let inst = Instance {
                    nodes,
                    pods,
                    gateway: ip(&s["gateway"]),
                    service: Ipv4Addr::from(u32::from(service.network()) + 1),
                };
                assert_eq!(inst.pods.len(), 2, "{n}: one pod on each of its two nodes: {s}");
                (n.to_string(), inst)
            })
            .collect()
    }

    /// From every pod of every instance: each of its own guests, and every address of the
    /// others. Returns `(from pod, to instance, target, answered, ping's output)`.
    fn probe_from_pods(&self, w: &Workdir) -> Vec<(String, String, String, bool, String)> {
        let inst = self.instances(w);
        let mut rows = Vec::new();
        for (from, fi) in &inst {
            for (pod, _) in &fi.pods {
                for (to, ti) in &inst {
                    let mut targets: Vec<(String, Ipv4Addr)> = ti.guests().filter(|(g, _)| g != pod).cloned().collect();
                    if to != from {
                        targets.push((format!("{to} gateway"), ti.gateway));
                        targets.push((format!("{to} service"), ti.service));
                    }
                    for (t, ip) in targets {
                        rows.push((pod.clone(), to.clone(), t, ip));
                    }
                }
            }
        }
        let pairs: Vec<(String, Ipv4Addr)> = rows.iter().map(|(p, _, _, ip)| (format!("{}-{p}", self.host.name), *ip)).collect();
        let answers = tokio::runtime::Runtime::new().unwrap().block_on(ping_all(&pairs));
        rows.into_iter()
            .zip(answers)
            .map(|((p, to, t, ip), (ok, out))| (p, to, format!("{t} {ip}"), ok, out))
            .collect()
    }
}

/// The instance a pod (`acme-worker-1-pod-1`) belongs to.
fn instance_of(pod: &str) -> &str {
    NAMES.iter().copied().find(|n| pod.starts_with(&format!("{n}-"))).unwrap()
}

/// Every row: its own instance answers; the `open` pairs answer on nodes and pods (and the
/// peer's gateway, the lab host's address on the peer subnet the federation opens); everything
/// else fails with "Network is unreachable".
fn check(rows: &[(String, String, String, bool, String)], open: &[(&str, &str)]) {
    assert!(rows.len() > 50, "too few probes: {}", rows.len());
    let mut wrong = Vec::new();
    for (pod, to, target, ok, out) in rows {
        let from = instance_of(pod);
        let paired = open.iter().any(|(a, b)| (from == *a && to == b) || (from == *b && to == a));
        let service = target.contains(" service ");
        let should_answer = from == to || (paired && !service);
        if should_answer != *ok || (!ok && !out.contains("Network is unreachable")) {
            wrong.push(format!("{pod} -> {target}: answered {ok}, expected {should_answer}: {}", out.trim()));
        }
    }
    assert!(wrong.is_empty(), "{} of {} probes are wrong:\n{}", wrong.len(), rows.len(), wrong.join("\n"));
}

acceptance! {
fn acme_cannot_reach_globex_from_inside_a_pod(tf: Tf) {
    let audit = Audit::new();
    let w = Workdir::new(tf, &audit.config(false));
    w.init();
    w.apply().ok();
    // Three instances, no federation: from every pod, nothing of another instance answers, and
    // the error is the absence of a route; its own nodes and pods answer.
    let rows = audit.probe_from_pods(&w);
    check(&rows, &[]);
    // The seed's own row: acme's pod to globex's first control plane.
    let globex_cp = audit.instances(&w)["globex"].nodes[0].1;
    let row = rows.iter().find(|r| r.0 == "acme-cp-1-pod-1" && r.2 == format!("globex-cp-1 {globex_cp}")).unwrap();
    assert!(!row.3 && row.4.contains("Network is unreachable"), "{row:?}");
    w.destroy().ok();
    assert!(namespaces_of(&audit.host.name).is_empty(), "{:?}", namespaces_of(&audit.host.name));
}
}

acceptance! {
fn acme_reaches_globex_from_inside_a_pod_only_while_they_are_federated(tf: Tf) {
    let audit = Audit::new();
    let w = Workdir::new(tf, &audit.config(true));
    w.init();
    w.apply().ok();
    // Federated: acme's and globex's nodes and pods answer each other both ways; initech and
    // every service address stay without a route.
    check(&audit.probe_from_pods(&w), &[("acme", "globex")]);
    // The federation destroyed: back to nothing crossing.
    w.write(&audit.config(false));
    w.apply().ok();
    check(&audit.probe_from_pods(&w), &[]);
    w.destroy().ok();
    assert!(namespaces_of(&audit.host.name).is_empty(), "{:?}", namespaces_of(&audit.host.name));
}
}
