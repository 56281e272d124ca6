//! Acceptance tests of `homelab_federation` on the `netns` backend: real Terraform, real
//! namespaces, real nftables. Reachability is measured with pings between the node and pod
//! namespaces the test's own lab host created.

use std::collections::BTreeMap;

use homelab::registry::file::FileStore;
use homelab::registry::Store;

use crate::util::netns::{namespaces_of, sh, try_sh, LabHostGuard};
use crate::acceptance;
use crate::util::terraform::Workdir;

struct Lab {
    home: tempfile::TempDir,
    host: LabHostGuard,
}

const NAMES: [&str; 3] = ["acme", "globex", "initech"];

impl Lab {
    fn new() -> Lab {
        Lab {
            home: tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap(),
            host: LabHostGuard::new(),
        }
    }

    fn config(&self, federations: &[(&str, &str)]) -> String {
        self.config_with(federations, 1)
    }

    /// [`Lab::config`] with `acme_workers` workers for acme.
    fn config_with(&self, federations: &[(&str, &str)], acme_workers: u32) -> String {
        let mut c = format!(
            "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n}}\n",
            self.home.path().display(),
            self.host.name
        );
        for n in NAMES {
            let workers = if n == "acme" { acme_workers } else { 1 };
            c.push_str(&format!("resource \"homelab_instance\" \"{n}\" {{\n  name = \"{n}\"\n  workers = {workers}\n}}\n"));
        }
        for (a, b) in federations {
            c.push_str(&format!(
                "resource \"homelab_federation\" \"{a}_{b}\" {{\n  instances = [homelab_instance.{a}.name, homelab_instance.{b}.name]\n  reason = \"test {a} with {b}\"\n}}\n"
            ));
        }
        c
    }

    fn store(&self) -> FileStore {
        FileStore::new(self.home.path())
    }

    /// The guests (nodes and pods) of every instance, from the state: (name, address); a pod is
    /// named `<node>-pod-<k>`, like its namespace after the lab host's name.
    fn guests(&self, w: &Workdir) -> BTreeMap<String, Vec<(String, String)>> {
        NAMES
            .iter()
            .map(|n| {
                let s = w.resource(&format!("homelab_instance.{n}")).unwrap();
                let mut guests = Vec::new();
                for x in s["nodes"].as_array().unwrap() {
                    let node = x["name"].as_str().unwrap();
                    guests.push((node.to_string(), x["ip"].as_str().unwrap().to_string()));
                    for (k, pod) in x["pods"].as_array().unwrap().iter().enumerate() {
                        guests.push((format!("{node}-pod-{}", k + 1), pod.as_str().unwrap().to_string()));
                    }
                }
                assert!(guests.iter().any(|(g, _)| g.contains("-pod-")), "{n} has no pods: {s}");
                (n.to_string(), guests)
            })
            .collect()
    }

    /// Which (from, to) instance pairs can reach each other: every node and pod of `from`
    /// pings every node and pod of `to`; all of them answer, or none.
    fn matrix(&self, w: &Workdir) -> Vec<(String, String)> {
        let guests = self.guests(w);
        let mut reach = Vec::new();
        for (from, fguests) in &guests {
            for (to, tguests) in &guests {
                if from == to {
                    continue;
                }
                let mut answered = Vec::new();
                let mut silent = Vec::new();
                for (fname, _) in fguests {
                    for (tname, ip) in tguests {
                        let ns = format!("{}-{fname}", self.host.name);
                        let (ok, _) = try_sh(&["ip", "netns", "exec", &ns, "ping", "-c", "1", "-W", "1", ip]);
                        if ok { answered.push(format!("{fname}->{tname}")) } else { silent.push(format!("{fname}->{tname}")) }
                    }
                }
                assert!(answered.is_empty() || silent.is_empty(), "{from} -> {to}: {answered:?} answer, {silent:?} do not");
                if silent.is_empty() {
                    reach.push((from.clone(), to.clone()));
                }
            }
        }
        reach
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .flat_map(|(a, b)| [(a.to_string(), b.to_string()), (b.to_string(), a.to_string())])
        .collect();
    v.sort();
    v
}

acceptance! {
fn federation_opens_exactly_one_pair_never_transitively_and_closes_again(tf: Tf) {
    let lab = Lab::new();
    let w = Workdir::new(tf, &lab.config(&[]));
    w.init();
    w.apply().ok();
    // Before: nothing crosses.
    assert_eq!(lab.matrix(&w), vec![]);

    // acme+globex: exactly that pair, both ways; initech reaches neither, neither reaches it.
    w.write(&lab.config(&[("acme", "globex")]));
    let plan = w.tf(&["plan"]).ok();
    assert!(plan.all().contains("Warning: Federation acme+globex opens a path"), "{}", plan.all());
    let a = w.resource("homelab_instance.acme").unwrap();
    let g = w.resource("homelab_instance.globex").unwrap();
    let said = plan.all().split_whitespace().collect::<Vec<_>>().join(" ");
    let line = format!(
        "these networks reach each other, in both directions: acme subnet {} and pod CIDR {} <-> globex subnet {} and pod CIDR {} (nodes and pods of both). Service CIDRs {} and {} stay unrouted.",
        a["subnet"].as_str().unwrap(),
        a["pod_cidr"].as_str().unwrap(),
        g["subnet"].as_str().unwrap(),
        g["pod_cidr"].as_str().unwrap(),
        a["service_cidr"].as_str().unwrap(),
        g["service_cidr"].as_str().unwrap()
    );
    assert!(said.contains(&line), "plan lacks {line:?}:\n{}", plan.all());
    // The exact list of what is put in place, as the plan says it.
    let warned = crate::util::terraform::federation_put_in_place(&plan.all());
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    let fed = w.resource("homelab_federation.acme_globex").unwrap();
    let mut applied: Vec<String> = fed["routes"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    applied.push("no NetworkPolicy (neither instance has a cluster)".into());
    assert_eq!(warned, applied, "the plan's list differs from what apply put in place");
    // And the host and the guests read back exactly that, and nothing more: the lab host's
    // rules (each network of one side to each of the other's, both ways: 2 x 2 x 2), its routes
    // to every node's pod slice via that node, and every node's and pod's routes (a line names
    // its guest: `<node or pod>: route <network> via <its gateway>`).
    let host = lab.host.name.clone();
    let ruleset = crate::util::netns::sh(&["ip", "netns", "exec", &host, "nft", "list", "ruleset"]);
    let rules: Vec<&String> = warned.iter().filter(|l| l.contains(": nft ")).collect();
    assert_eq!(rules.len(), 8, "{warned:#?}");
    for l in &rules {
        let (_, rule) = l.split_once(": accept ").unwrap();
        let parts: Vec<&str> = rule.split_whitespace().collect(); // if_a -> if_b net_a -> net_b
        let text = format!("iifname \"{}\" oifname \"{}\" ip saddr {} ip daddr {} accept", parts[0], parts[2], parts[3], parts[5]);
        assert!(ruleset.contains(&text), "no rule {text:?} in the lab host:\n{ruleset}");
    }
    assert_eq!(ruleset.matches(" accept comment ").count(), 8, "the lab host has rules the plan did not name:\n{ruleset}");
    let host_routes = crate::util::netns::routes(&host);
    let host_lines: Vec<&String> = warned.iter().filter(|l| l.starts_with(&format!("netns {host}: route "))).collect();
    assert_eq!(host_lines.len(), 4, "one per node of the pair: {warned:#?}");
    for l in &host_lines {
        let route = l.split_once(": route ").unwrap().1.split(" (pods of ").next().unwrap();
        assert!(host_routes.contains(&route.to_string()), "the lab host lacks {route}: {host_routes:?}");
    }
    let via_nodes: Vec<&String> = host_routes.iter().filter(|r| r.contains(" via ")).collect();
    assert_eq!(via_nodes.len(), 4, "the lab host routes more than the plan named: {host_routes:?}");
    let guest_lines: Vec<&String> = warned.iter().filter(|l| l.contains(": route ") && !l.starts_with("netns ")).collect();
    // 2 instances x (2 nodes + 2 pods) x (peer subnet + peer pod CIDR).
    assert_eq!(guest_lines.len(), 16, "{warned:#?}");
    for l in &guest_lines {
        let (guest, route) = l.split_once(": route ").unwrap();
        let (net, gw) = route.split_once(" via ").unwrap();
        let routes = crate::util::netns::routes(&format!("{host}-{guest}"));
        assert!(routes.iter().any(|r| r.starts_with(&format!("{net} via {gw}"))), "{guest} lacks {route}: {routes:?}");
    }
    assert_eq!(fed["id"], "acme+globex");
    assert_eq!(fed["state"], "complete");
    assert_eq!(fed["policies"], serde_json::json!([]));
    assert!(fed["routes"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("accept")), "{fed}");
    let doc = lab.store().load().unwrap();
    assert_eq!(doc.instances["acme"].federated, vec!["globex"]);
    assert_eq!(doc.instances["globex"].federated, vec!["acme"]);
    // Nothing else changes: no plan, and no drift for a refresh-only plan either (the
    // instances do not carry what another resource changes); the data source tells.
    let r = w.plan_exit();
    assert_eq!(r.code, 0, "{}", r.all());
    let r = w.tf(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(r.code, 0, "refresh-only after the federation reports drift:\n{}", r.all());
    let inst = w.resource("homelab_instance.acme").unwrap();
    assert!(inst["federated_with"].is_null(), "{inst}");
    let probe = Workdir::new(
        w.tf,
        &format!(
            "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n}}\ndata \"homelab_cidr_allocation\" \"acme\" {{\n  name = \"acme\"\n}}\noutput \"f\" {{\n  value = data.homelab_cidr_allocation.acme.federated_with\n}}\n",
            lab.home.path().display(),
            lab.host.name
        ),
    );
    probe.init();
    probe.apply().ok();
    assert_eq!(probe.outputs()["f"]["value"], serde_json::json!(["globex"]));

    // + globex+initech: acme still cannot reach initech (no transitivity).
    w.write(&lab.config(&[("acme", "globex"), ("globex", "initech")]));
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex"), ("globex", "initech")]));

    // After destroying the federations: nothing crosses, forwarding is off again.
    w.write(&lab.config(&[]));
    w.apply().ok();
    assert_eq!(lab.matrix(&w), vec![]);
    let fwd = sh(&["ip", "netns", "exec", &lab.host.name, "sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(fwd.trim(), "0");
    // Both federations went in one apply: the lab host routes no pod of anyone any more, and
    // no node or pod keeps a route beyond its own instance.
    let host_routes = crate::util::netns::routes(&lab.host.name);
    assert!(host_routes.iter().all(|r| !r.contains(" via ")), "{host_routes:?}");
    for (name, guests) in lab.guests(&w) {
        let inst = w.resource(&format!("homelab_instance.{name}")).unwrap();
        let own: Vec<ipnet::Ipv4Net> = ["subnet", "pod_cidr"].iter().map(|k| inst[*k].as_str().unwrap().parse().unwrap()).collect();
        for (g, _) in guests {
            for r in crate::util::netns::routes(&format!("{}-{g}", lab.host.name)) {
                let dst = r.split_whitespace().next().unwrap();
                let dst: ipnet::Ipv4Net = dst.parse().or_else(|_| dst.parse::<std::net::Ipv4Addr>().map(ipnet::Ipv4Net::from)).unwrap();
                assert!(own.iter().any(|o| o.contains(&dst)), "{g} keeps a route beyond {name}: {r}");
            }
        }
    }
    let actions: Vec<String> = lab.store().events().unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions.iter().filter(|a| *a == "federation.create").count(), 2, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| *a == "federation.destroy").count(), 2, "{actions:?}");
    lab.store().verify_events().unwrap();
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

acceptance! {
fn federation_drift_is_repaired_by_the_next_apply(tf: Tf) {
    let lab = Lab::new();
    let w = Workdir::new(tf, &lab.config(&[("acme", "globex")]));
    w.init();
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    let empty = |w: &Workdir| {
        let r = w.plan_exit();
        assert_eq!(r.code, 0, "{}", r.all());
    };
    empty(&w);

    // 1. The provider's nftables table flushed out of band.
    sh(&["ip", "netns", "exec", &lab.host.name, "nft", "flush", "table", "inet", "homelab"]);
    assert_eq!(lab.matrix(&w), vec![]);
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("missing"), "{}", r.stdout);
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    empty(&w);

    // 2. A guest route removed.
    let ns = format!("{}-acme-worker-1", lab.host.name);
    let globex_subnet = w.resource("homelab_instance.globex").unwrap()["subnet"].as_str().unwrap().to_string();
    sh(&["ip", "-n", &ns, "route", "del", &globex_subnet]);
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains(&format!("acme-worker-1: route to {globex_subnet}")), "{}", r.stdout);
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    empty(&w);

    // 3. The lab host's route to a pod slice, and a pod's route to the peer's pods, removed.
    let acme = w.resource("homelab_instance.acme").unwrap();
    let slice = acme["nodes"][0]["pod_cidr"].as_str().unwrap().to_string();
    sh(&["ip", "-n", &lab.host.name, "route", "del", &slice]);
    let pod = format!("{}-acme-worker-1-pod-1", lab.host.name);
    let globex_pods = w.resource("homelab_instance.globex").unwrap()["pod_cidr"].as_str().unwrap().to_string();
    sh(&["ip", "-n", &pod, "route", "del", &globex_pods]);
    // Each cut is felt: cp-1's pod gets no answer from globex (the lab host cannot route the
    // reply to its slice), worker-1's pod has no route to globex's pods.
    let g = &lab.guests(&w)["globex"];
    let (g_node, g_pod) = (g[0].1.clone(), g[1].1.clone());
    let cp_pod = format!("{}-acme-cp-1-pod-1", lab.host.name);
    assert!(!try_sh(&["ip", "netns", "exec", &cp_pod, "ping", "-c", "1", "-W", "1", &g_node]).0);
    let (ok, out) = try_sh(&["ip", "netns", "exec", &pod, "ping", "-c", "1", "-W", "1", &g_pod]);
    assert!(!ok && out.contains("Network is unreachable"), "{out}");
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    let said = r.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(said.contains(&format!("route {slice} via")), "{}", r.stdout);
    assert!(said.contains(&format!("acme-worker-1-pod-1: route to {globex_pods}")), "{}", r.stdout);
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    empty(&w);

    // 4. acme grows a worker while federated: its node and pod get the routes to globex, the
    // lab host routes its slice, and every node and pod of the pair reaches the other's.
    w.write(&lab.config_with(&[("acme", "globex")], 2));
    w.apply().ok();
    assert!(lab.guests(&w)["acme"].iter().any(|(g, _)| g == "acme-worker-2-pod-1"));
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    w.write(&lab.config(&[("acme", "globex")]));
    w.apply().ok();
    assert_eq!(lab.matrix(&w), pairs(&[("acme", "globex")]));
    let acme_br = homelab::backend::netns::bridge_name(&acme["subnet"].as_str().unwrap().parse().unwrap());
    let slices: Vec<String> = crate::util::netns::routes(&lab.host.name).into_iter().filter(|r| r.ends_with(&format!("dev {acme_br}")) && r.contains(" via ")).collect();
    assert_eq!(slices.len(), 2, "the lab host still routes the slice of the removed worker: {slices:?}");
    empty(&w);

    // 5. The registry tag removed.
    let path = lab.home.path().join("instances.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["instances"]["acme"]["federated"] = serde_json::json!([]);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("registry tag"), "{}", r.stdout);
    w.apply().ok();
    assert_eq!(lab.store().load().unwrap().instances["acme"].federated, vec!["globex"]);
    empty(&w);
    let actions: Vec<String> = lab.store().events().unwrap().into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&"federation.repair".to_string()), "{actions:?}");

    // A configuration that removes everything destroys the federation first.
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
    assert!(lab.store().load().unwrap().instances.is_empty());
}
}

acceptance! {
fn duplicate_federation_is_refused_at_plan_naming_the_existing_one(tf: Tf) {
    let lab = Lab::new();
    let w = Workdir::new(tf, &lab.config(&[("acme", "globex")]));
    w.init();
    w.apply().ok();
    // Another folder sharing the home federating the same pair.
    let other = Workdir::new(tf, &format!(
        "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n}}\nresource \"homelab_federation\" \"again\" {{\n  instances = [\"globex\", \"acme\"]\n}}\n",
        lab.home.path().display(),
        lab.host.name
    ));
    other.init();
    let r = other.tf(&["plan"]).failed();
    assert!(r.all().contains("already federated") && r.all().contains("acme+globex"), "{}", r.all());
    // The same pair twice in one configuration.
    let mut twice = lab.config(&[("acme", "globex")]);
    twice.push_str("resource \"homelab_federation\" \"twice\" {\n  instances = [homelab_instance.globex.name, homelab_instance.acme.name]\n}\n");
    w.write(&twice);
    let r = w.tf(&["plan"]).failed();
    assert!(r.all().contains("already federated"), "{}", r.all());
    // An instance federated with itself, or a missing instance.
    let mut bad = lab.config(&[("acme", "globex")]);
    bad.push_str("resource \"homelab_federation\" \"self\" {\n  instances = [\"acme\", \"acme\"]\n}\n");
    w.write(&bad);
    let r = w.tf(&["plan"]).failed();
    assert!(r.all().contains("exactly two instances"), "{}", r.all());
    let mut ghost = lab.config(&[("acme", "globex")]);
    ghost.push_str("resource \"homelab_federation\" \"ghost\" {\n  instances = [\"acme\", \"nobody\"]\n}\n");
    w.write(&ghost);
    let r = w.tf(&["plan"]).failed();
    assert!(r.all().contains("No instance `nobody`"), "{}", r.all());
    // Destroying an instance the registry still lists as federated is refused by the provider,
    // naming the federation (here from a folder that imported the instance alone).
    w.write(&lab.config(&[("acme", "globex")]));
    let lone = Workdir::new(tf, &format!(
        "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n}}\nresource \"homelab_instance\" \"acme\" {{\n  name = \"acme\"\n  workers = 1\n}}\n",
        lab.home.path().display(),
        lab.host.name
    ));
    lone.init();
    lone.tf(&["import", "homelab_instance.acme", "acme"]).ok();
    let r = lone.destroy().failed();
    assert!(r.all().contains("federated with globex") && r.all().contains("acme+globex"), "{}", r.all());
    assert!(namespaces_of(&lab.host.name).contains(&format!("{}-acme-cp-1", lab.host.name)));
    w.destroy().ok();
    lab.store().verify_events().unwrap();
}
}
