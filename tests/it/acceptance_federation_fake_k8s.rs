//! `homelab_federation` between two Vagrant instances with clusters, through the real Terraform
//! CLI, against the FAKE `vagrant` stand-in (no VirtualBox VM can run here) and two FAKE
//! Kubernetes API servers (`util::fake_k8s`: no API server can run here): create, drift (a
//! NetworkPolicy deleted out of band, a guest route lost), repair, destroy. Terraform and the
//! provider run inside a network namespace of the test's own, which stands for the lab host:
//! the instances' host-only interfaces are bridges there, the forwarding rules go into its
//! iptables, and the fake API servers listen on its loopback. The root namespace is untouched.

use std::path::PathBuf;

use homelab::registry::file::FileStore;
use homelab::registry::Store;
use serde_json::Value;

use crate::acceptance;
use crate::util::fake_k8s::FakeCluster;
use crate::util::netns::{sh, try_sh, LabHostGuard};
use crate::util::terraform::{repo_root, Tf, Workdir};
use crate::util::vagrant::fake_vagrant;

/// (instance, subnet, workers) of the two federated instances.
const INSTANCES: [(&str, &str, u32); 2] = [("acme", "192.168.56.0/24", 1), ("globex", "192.168.57.0/24", 0)];

struct Lab {
    // Dropped in this order: the fake servers leave the namespace before the guard deletes it.
    clusters: Vec<(String, FakeCluster)>,
    host: LabHostGuard,
    home: tempfile::TempDir,
    confs: tempfile::TempDir,
    tf: Tf,
}

impl Lab {
    fn new(tf: Tf) -> Lab {
        let host = LabHostGuard::new();
        let ns = host.name.clone();
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // The lab host forwards already (as a libvirt host does): the provider then leaves the
        // sysctl alone, and writes no "it was off" marker.
        sh(&["ip", "netns", "exec", &ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let confs = tempfile::Builder::new().prefix("homelab-confs-").tempdir().unwrap();
        let mut clusters = Vec::new();
        for (name, _, _) in INSTANCES {
            let c = FakeCluster::start_in_netns(&ns);
            let conf = format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: admin@{name}\nclusters:\n- cluster:\n    server: {}\n  name: {name}\ncontexts:\n- context:\n    cluster: {name}\n    user: admin\n  name: admin@{name}\nusers:\n- name: admin\n  user:\n    token: fake-token-{name}\n",
                c.url()
            );
            std::fs::write(confs.path().join(format!("{name}-cp-1.conf")), conf).unwrap();
            clusters.push((name.to_string(), c));
        }
        let home = tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap();
        Lab { clusters, host, home, confs, tf }
    }

    /// What `vagrant up` does on the host for VirtualBox: one host-only interface per instance,
    /// holding its gateway (bridges here).
    fn host_only_interfaces(&self) {
        let ns = &self.host.name;
        for (i, (_, subnet, _)) in INSTANCES.iter().enumerate() {
            let link = format!("hlfk{i}");
            let gw = subnet.replace(".0/24", ".1/24");
            sh(&["ip", "-n", ns, "link", "add", &link, "type", "bridge"]);
            sh(&["ip", "-n", ns, "addr", "add", &gw, "dev", &link]);
            sh(&["ip", "-n", ns, "link", "set", &link, "up"]);
        }
    }

    fn cluster(&self, name: &str) -> &FakeCluster {
        &self.clusters.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn config(&self, federated: bool) -> String {
        let mut c = format!(
            "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"vagrant\"\n  vagrant_bin = \"{}\"\n}}\n",
            self.home.path().display(),
            fake_vagrant().display()
        );
        for (name, subnet, workers) in INSTANCES {
            c.push_str(&format!(
                "resource \"homelab_instance\" \"{name}\" {{\n  name = \"{name}\"\n  subnet = \"{subnet}\"\n  workers = {workers}\n  provision = true\n}}\n"
            ));
        }
        if federated {
            c.push_str("resource \"homelab_federation\" \"pair\" {\n  instances = [homelab_instance.acme.name, homelab_instance.globex.name]\n  reason = \"shared CI\"\n  namespaces = [\"default\", \"lab\"]\n}\n");
        }
        c
    }

    fn workdir(&self) -> Workdir {
        let mut w = Workdir::new(self.tf, &self.config(false));
        w.netns = Some(self.host.name.clone());
        let fake_bin = repo_root().join("tests/fixtures/vagrant/fake-bin");
        w.env.push(("PATH".into(), format!("{}:{}", fake_bin.display(), std::env::var("PATH").unwrap_or_default())));
        w.env.push(("FAKE_VAGRANT_ADMIN_CONF_DIR".into(), self.confs.path().display().to_string()));
        w.init();
        w
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        self.home.path().join("instances").join(name)
    }

    /// The lab host's iptables rules (`iptables -S`), all chains.
    fn rules(&self) -> String {
        sh(&["ip", "netns", "exec", &self.host.name, "iptables", "-S"])
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

acceptance! {
fn fake_k8s_federation_of_two_clusters_create_drift_repair_destroy(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir();
    w.apply().ok();
    lab.host_only_interfaces();
    assert_eq!(w.plan_exit().code, 0);
    for (name, _) in &lab.clusters {
        assert!(lab.instance_dir(name).join("kubeconfig").exists(), "{name} has no kubeconfig");
        assert!(lab.cluster(name).policies().is_empty());
    }

    // The plan says exactly what will be opened; apply opens exactly that.
    w.write(&lab.config(true));
    let plan = w.tf(&["plan"]).ok();
    let warned = crate::util::terraform::federation_put_in_place(&plan.all());
    let expected_policies = [
        "acme/default/homelab-federation-globex",
        "acme/lab/homelab-federation-globex",
        "globex/default/homelab-federation-acme",
        "globex/lab/homelab-federation-acme",
    ];
    for p in expected_policies {
        assert!(warned.contains(&format!("NetworkPolicy {p}")), "the plan does not name {p}: {warned:?}");
    }
    w.apply().ok();
    let fed = w.resource("homelab_federation.pair").unwrap();
    assert_eq!(fed["state"], "complete", "{fed}");
    assert_eq!(strings(&fed["policies"]), expected_policies);
    let mut applied = strings(&fed["routes"]);
    applied.extend(strings(&fed["policies"]).into_iter().map(|p| format!("NetworkPolicy {p}")));
    assert_eq!(warned, applied, "the plan's list differs from what apply put in place");

    // What the clusters hold: exactly one policy per namespace and side, admitting the peer's
    // pods and subnet and keeping the cluster's own traffic, sent by server-side apply.
    for (me, peer) in [("acme", "globex"), ("globex", "acme")] {
        let cidrs = |n: &str| {
            let s = w.resource(&format!("homelab_instance.{n}")).unwrap();
            (s["pod_cidr"].as_str().unwrap().to_string(), s["subnet"].as_str().unwrap().to_string())
        };
        let ((own_pods, own_subnet), (peer_pods, peer_subnet)) = (cidrs(me), cidrs(peer));
        let held = lab.cluster(me).policies();
        let names: Vec<&String> = held.keys().collect();
        assert_eq!(names, [&format!("default/homelab-federation-{peer}"), &format!("lab/homelab-federation-{peer}")]);
        for p in held.values() {
            assert_eq!(p["kind"], "NetworkPolicy");
            assert_eq!(p["spec"]["podSelector"], serde_json::json!({}), "{p}");
            assert_eq!(p["spec"]["policyTypes"], serde_json::json!(["Ingress"]), "{p}");
            let from: Vec<String> = p["spec"]["ingress"][0]["from"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["ipBlock"]["cidr"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(from, [peer_pods.clone(), peer_subnet.clone(), own_pods.clone(), own_subnet.clone()], "{p}");
            assert_eq!(p["metadata"]["annotations"]["homelab.dev/federation"], "acme+globex", "{p}");
        }
        for seen in lab.cluster(me).seen().iter().filter(|s| s.method == "PATCH") {
            assert_eq!(seen.content_type, "application/apply-patch+yaml");
            assert!(seen.query.contains("fieldManager=") && seen.query.contains("force=true"), "{seen:?}");
        }
        assert_eq!(lab.cluster(me).unexpected(), Vec::<String>::new());
    }
    // The host (the lab host namespace) forwards exactly the pair's subnets; every node has
    // its route to the peer.
    let rules = lab.rules();
    assert!(rules.contains("-s 192.168.56.0/24 -d 192.168.57.0/24") && rules.contains("-s 192.168.57.0/24 -d 192.168.56.0/24"), "{rules}");
    for (node, peer) in [("acme-cp-1", "192.168.57.0/24"), ("acme-worker-1", "192.168.57.0/24"), ("globex-cp-1", "192.168.56.0/24")] {
        let inst = node.split('-').next().unwrap();
        let routes = std::fs::read_to_string(lab.instance_dir(inst).join(format!(".fake-routes-{node}"))).unwrap();
        assert!(routes.contains(peer), "{node}: {routes}");
    }
    let doc = FileStore::new(lab.home.path()).load().unwrap();
    assert_eq!(doc.instances["acme"].federated, vec!["globex"]);
    assert_eq!(w.plan_exit().code, 0);

    // Drift: a policy deleted out of band in one cluster, a route lost on one node. Refresh
    // sees both (refresh-only reports them), the plan repairs in place, apply restores them.
    assert!(lab.cluster("globex").delete_out_of_band("lab", "homelab-federation-acme"));
    std::fs::write(lab.instance_dir("acme").join(".fake-routes-acme-worker-1"), "[]").unwrap();
    let r = w.tf(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("globex/lab/homelab-federation-acme") && r.stdout.contains("acme-worker-1: route to 192.168.57.0/24"), "{}", r.stdout);
    let r = w.tf(&["plan"]).ok();
    assert!(r.stdout.contains("updated in-place") && !r.stdout.contains("must be replaced"), "{}", r.stdout);
    w.apply().ok();
    assert!(lab.cluster("globex").policies().contains_key("lab/homelab-federation-acme"));
    let routes = std::fs::read_to_string(lab.instance_dir("acme").join(".fake-routes-acme-worker-1")).unwrap();
    assert!(routes.contains("192.168.57.0/24"), "{routes}");
    assert_eq!(w.resource("homelab_federation.pair").unwrap()["state"], "complete");
    assert_eq!(w.plan_exit().code, 0);

    // Destroying the federation takes every piece away, and only those.
    w.write(&lab.config(false));
    w.apply().ok();
    for (name, _) in &lab.clusters {
        assert!(lab.cluster(name).policies().is_empty(), "{name} keeps {:?}", lab.cluster(name).policies());
        assert_eq!(lab.cluster(name).unexpected(), Vec::<String>::new());
    }
    let rules = lab.rules();
    assert!(!rules.contains("192.168.56.0/24 -d 192.168.57.0/24"), "{rules}");
    for node in ["acme-cp-1", "acme-worker-1"] {
        let routes = std::fs::read_to_string(lab.instance_dir("acme").join(format!(".fake-routes-{node}"))).unwrap();
        assert!(!routes.contains("192.168.57.0/24"), "{node}: {routes}");
    }
    let doc = FileStore::new(lab.home.path()).load().unwrap();
    assert!(doc.instances["acme"].federated.is_empty());
    let store = FileStore::new(lab.home.path());
    let events = store.events().unwrap();
    let repair = events.iter().find(|e| e.action == "federation.repair").expect("a federation.repair event");
    assert_eq!(repair.subject, "acme+globex");
    let restored = strings(&repair.details["restored"]);
    assert_eq!(restored, ["acme-worker-1: route to 192.168.57.0/24", "globex/lab/homelab-federation-acme"], "{:?}", repair.details);
    let actions: Vec<String> = events.into_iter().map(|e| e.action).collect();
    for a in ["federation.create", "federation.repair", "federation.destroy"] {
        assert!(actions.iter().any(|x| x == a), "no {a} event: {actions:?}");
    }
    store.verify_events().unwrap();
    let (fwd_ok, fwd) = try_sh(&["ip", "netns", "exec", &lab.host.name, "sysctl", "-n", "net.ipv4.ip_forward"]);
    assert!(fwd_ok && fwd.trim() == "1", "the provider turned off forwarding it did not turn on: {fwd}");
    assert!(!std::path::Path::new("/run/homelab/iptables-host.ip_forward-was-0").exists(), "a root-namespace marker was written");
    w.destroy().ok();
}
}
