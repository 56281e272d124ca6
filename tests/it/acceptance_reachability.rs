//! Acceptance tests of `homelab_reachability` through the real Terraform CLI on the `netns`
//! backend: on Terraform 1.5+ in a `check` block that passes on an isolated lab and warns,
//! naming the address, once a path is opened by hand; on Terraform 1.0 (no `check` blocks) in
//! outputs. The path is opened inside the test's own lab host (a forward rule and forwarding on)
//! and its nodes (a route each way); nothing touches the root namespace.

use crate::acceptance;
use crate::util::netns::{namespaces_of, sh, LabHostGuard};
use crate::util::terraform::Workdir;

const NAMES: [&str; 3] = ["acme", "globex", "initech"];

fn config(home: &std::path::Path, host: &str, check: bool) -> String {
    let mut c = format!(
        "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{host}\"\n}}\n",
        home.display()
    );
    for n in NAMES {
        c.push_str(&format!("resource \"homelab_instance\" \"{n}\" {{\n  name = \"{n}\"\n  workers = 1\n}}\n"));
    }
    if check {
        c.push_str(
            "check \"isolation\" {\n  data \"homelab_reachability\" \"all\" {}\n  assert {\n    condition     = length(data.homelab_reachability.all.foreign_reachable) == 0\n    error_message = \"isolation broken: ${join(\", \", data.homelab_reachability.all.foreign_reachable)}\"\n  }\n}\n",
        );
    } else {
        c.push_str(
            "data \"homelab_reachability\" \"all\" {\n  depends_on = [homelab_instance.acme, homelab_instance.globex, homelab_instance.initech]\n}\noutput \"foreign\" {\n  value = data.homelab_reachability.all.foreign_reachable\n}\noutput \"probes\" {\n  value = length(data.homelab_reachability.all.matrix)\n}\noutput \"answered\" {\n  value = length([for r in data.homelab_reachability.all.matrix : r if r.reachable])\n}\n",
        );
    }
    c
}

/// Opens acme-cp-1 <-> globex-cp-1 by hand: forwarding on and two accept rules in the lab host,
/// and a route to the other subnet in each of the two nodes.
fn open_a_path_by_hand(host: &str, w: &Workdir) -> String {
    let get = |n: &str, k: &str| w.resource(&format!("homelab_instance.{n}")).unwrap()[k].as_str().unwrap().to_string();
    let br = |n: &str| homelab::backend::netns::bridge_name(&get(n, "subnet").parse().unwrap());
    sh(&["ip", "netns", "exec", host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (i, o) in [("acme", "globex"), ("globex", "acme")] {
        sh(&["ip", "netns", "exec", host, "nft", "insert", "rule", "inet", "homelab", "forward", "iifname", &br(i), "oifname", &br(o), "accept"]);
        sh(&["ip", "-n", &format!("{host}-{i}-cp-1"), "route", "add", &get(o, "subnet"), "via", &get(i, "gateway")]);
    }
    let globex_cp = w.resource("homelab_instance.globex").unwrap()["nodes"][0]["ip"].as_str().unwrap().to_string();
    format!("{globex_cp} (globex-cp-1 of globex) from acme-cp-1")
}

acceptance! {
fn reachability_check_passes_on_an_isolated_lab_and_warns_naming_a_path_opened_by_hand(tf: Tf) {
    let home = tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap();
    let host = LabHostGuard::new();
    let check = tf.at_least(1, 5);
    let w = Workdir::new(tf, &config(home.path(), &host.name, check));
    w.init();
    w.apply().ok();
    if check {
        // Isolated: the check holds, every plan says nothing about it.
        let r = w.tf(&["plan", "-no-color"]).ok();
        assert!(!r.all().contains("Check block assertion failed"), "{}", r.all());
        let path = open_a_path_by_hand(&host.name, &w);
        // Broken: the plan warns, naming the address that answered; it does not fail.
        let r = w.tf(&["plan", "-no-color"]).ok();
        let said = r.all().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(said.contains("Check block assertion failed") && said.contains("isolation broken:"), "{}", r.all());
        assert!(said.contains(&path), "the warning does not name {path:?}:\n{}", r.all());
        assert!(!said.contains("of initech"), "only the opened path answers:\n{}", r.all());
    } else {
        // Terraform 1.0: the data source in outputs.
        let out = w.outputs();
        assert_eq!(out["foreign"]["value"], serde_json::json!([]), "{out}");
        // 12 sources (2 nodes + 2 pods of 3 instances) x (3 own guests + 2 x 6 foreign addresses);
        // own guests answer.
        assert_eq!(out["probes"]["value"], 12 * 15, "{out}");
        assert_eq!(out["answered"]["value"], 12 * 3, "{out}");
        let path = open_a_path_by_hand(&host.name, &w);
        w.apply().ok();
        let foreign: Vec<String> = serde_json::from_value(w.outputs()["foreign"]["value"].clone()).unwrap();
        assert!(foreign.contains(&path), "{foreign:?} lacks {path:?}");
        assert!(foreign.iter().all(|f| !f.contains("initech")), "{foreign:?}");
    }
    w.destroy().ok();
    assert!(namespaces_of(&host.name).is_empty(), "{:?}", namespaces_of(&host.name));
}
}
