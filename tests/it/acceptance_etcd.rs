//! The registry on etcd through the real Terraform CLI (1.0.3 and the newest), real etcd
//! (Debian's, on loopback: `util::etcd_cluster`) and real `netns` lab hosts: two lab hosts (two
//! homes, two lab-host namespaces) sharing one etcd prefix apply in parallel and get disjoint
//! networks, each lab recording its host; a saved plan whose networks the other host took since
//! fails naming the holder; a reservation whose lease ended before the apply gives a clear
//! error; wrong credentials, a TLS mismatch and an unreachable cluster are refused at plan with
//! the endpoint and what to do; `registry migrate` moves a file registry into etcd and the
//! workspace carries on with an empty plan.

use std::collections::BTreeMap;

use homelab::registry::etcd::{EtcdConfig, EtcdStore};
use homelab::registry::Store;

use crate::acceptance;
use crate::util::etcd_cluster::{self, Cluster, Options};
use crate::util::lab::{instance, plan_is_empty, Lab};
use crate::util::terraform::Workdir;

/// A prefix of this test's own on the shared cluster (tests of one process share it).
fn prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("/homelab-acc-{}-{}-{test}/", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The `etcd { … }` block for `endpoints` under `prefix`, with `extra` lines.
fn etcd_block(endpoints: &[String], prefix: &str, extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!("  etcd {{\n    endpoints = [{}]\n    prefix    = \"{prefix}\"\n{extra}  }}\n", list.join(", "))
}

/// A working directory of `lab` whose provider keeps its registry in etcd (`block`).
fn workdir_on(lab: &Lab, block: &str, body: &str) -> Workdir {
    let w = Workdir::new(lab.tf, &format!("{}{body}", lab.provider(block)));
    w.init();
    w
}

/// The registry as the etcd store reads it.
fn store(endpoints: Vec<String>, prefix: &str) -> EtcdStore {
    EtcdStore::new(EtcdConfig::new(endpoints, prefix))
}

/// This machine's host name, as the provider records it.
fn machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

/// Every network of every instance in `ws`' states, by instance name.
fn networks(ws: &[&Workdir], names: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for w in ws {
        for n in names {
            if let Some(r) = w.resource(&format!("homelab_instance.{n}")) {
                let nets = ["subnet", "pod_cidr", "service_cidr"].iter().map(|k| r[*k].as_str().unwrap().to_string()).collect();
                out.insert(n.to_string(), nets);
            }
        }
    }
    out
}

/// Whether two CIDR strings overlap.
fn overlap(a: &str, b: &str) -> bool {
    let (a, b): (homelab::net::Ipv4Net, homelab::net::Ipv4Net) = (a.parse().unwrap(), b.parse().unwrap());
    homelab::net::overlaps(&a, &b)
}

acceptance! {
fn two_lab_hosts_sharing_an_etcd_registry_apply_in_parallel_and_get_disjoint_networks(tf: Tf) {
    let endpoints = etcd_cluster::shared().endpoints();
    let prefix = prefix("parallel");
    let block = etcd_block(&endpoints, &prefix, "");
    let (a, b) = (Lab::new(tf), Lab::new(tf));
    let wa = workdir_on(&a, &block, &format!("{}{}", instance("acme", "  workers = 1\n"), instance("globex", "  workers = 0\n")));
    let wb = workdir_on(&b, &block, &format!(
        "{}{}data \"homelab_cidr_allocation\" \"acme\" {{\n  name = \"acme\"\n}}\noutput \"acme_host\" {{\n  value = data.homelab_cidr_allocation.acme.host\n}}\n",
        instance("initech", "  workers = 1\n"),
        instance("hooli", "  workers = 0\n")
    ));
    // Both hosts apply at the same time.
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| wa.apply());
        let hb = s.spawn(|| wb.apply());
        (ha.join().unwrap(), hb.join().unwrap())
    });
    ra.ok();
    rb.ok();
    let names = ["acme", "globex", "initech", "hooli"];
    let nets = networks(&[&wa, &wb], &names);
    assert_eq!(nets.len(), 4, "{nets:?}");
    let all: Vec<(&String, &String)> = nets.iter().flat_map(|(n, v)| v.iter().map(move |c| (n, c))).collect();
    for (i, (n1, c1)) in all.iter().enumerate() {
        for (n2, c2) in &all[i + 1..] {
            assert!(!overlap(c1, c2), "{n1} {c1} overlaps {n2} {c2}: {nets:?}");
        }
    }
    // Each lab records the lab host it lives on, and the other host sees it.
    let host_a = format!("{}/{}", machine(), a.host.name);
    let host_b = format!("{}/{}", machine(), b.host.name);
    assert_eq!(wa.resource("homelab_instance.acme").unwrap()["host"], host_a.as_str());
    assert_eq!(wb.resource("homelab_instance.initech").unwrap()["host"], host_b.as_str());
    wb.apply().ok();
    assert_eq!(wb.outputs()["acme_host"]["value"], host_a.as_str());
    // Without the data source (acme goes below), host B's configuration is its two labs.
    wb.write(&format!("{}{}{}", b.provider(&block), instance("initech", "  workers = 1\n"), instance("hooli", "  workers = 0\n")));
    wb.apply().ok();
    let registry = store(endpoints.clone(), &prefix);
    let doc = registry.load().unwrap();
    assert_eq!(doc.instances.keys().collect::<Vec<_>>(), vec!["acme", "globex", "hooli", "initech"]);
    let v = registry.verify_events().unwrap();
    assert!(v.events >= 8, "{v:?}");
    plan_is_empty(&wa);
    plan_is_empty(&wb);
    // The commands read the same registry with --registry.
    let url = format!("etcd://{}{prefix}", endpoints[0].trim_start_matches("http://"));
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(["events", "verify", "--registry", &url])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert!(String::from_utf8_lossy(&cli.stdout).contains(&format!("ok: {} events", v.events)), "{}", String::from_utf8_lossy(&cli.stdout));
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(["registry", "list", "--registry", &url])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(listed.contains(n), "{listed}");
    }
    // Destroying on one host leaves the other's labs alone.
    wa.destroy().ok();
    let doc = registry.load().unwrap();
    assert_eq!(doc.instances.keys().collect::<Vec<_>>(), vec!["hooli", "initech"]);
    plan_is_empty(&wb);
    wb.destroy().ok();
    assert!(registry.load().unwrap().instances.is_empty());
    registry.verify_events().unwrap();
}
}

acceptance! {
fn a_saved_plan_applied_after_the_other_host_took_its_networks_fails_naming_the_holder(tf: Tf) {
    let endpoints = etcd_cluster::shared().endpoints();
    let prefix = prefix("saved");
    let block = etcd_block(&endpoints, &prefix, "");
    let (a, b) = (Lab::new(tf), Lab::new(tf));
    let wa = workdir_on(&a, &block, &instance("acme", "  workers = 0\n"));
    wa.tf(&["plan", "-out", "acme.tfplan"]).ok();
    let reserved = store(endpoints.clone(), &prefix).load().unwrap().instances["acme"].allocation;
    // The other host pins acme's planned subnet: a pin takes over an automatic reservation.
    let wb = workdir_on(&b, &block, &instance("initech", &format!("  workers = 0\n  subnet = \"{}\"\n", reserved.subnet)));
    wb.apply().ok();
    let r = wa.tf(&["apply", "acme.tfplan"]).failed();
    let all = r.flat();
    assert!(all.contains("taken over by instance `initech`"), "{all}");
    assert!(all.contains(&reserved.subnet.to_string()), "{all}");
    // Nothing of acme was built, and a new plan gets free networks.
    let doc = store(endpoints.clone(), &prefix).load().unwrap();
    assert!(doc.instances.get("acme").is_none_or(|e| e.status != homelab::registry::Status::Allocated), "{:?}", doc.instances.get("acme"));
    wa.apply().ok();
    let nets = networks(&[&wa, &wb], &["acme", "initech"]);
    assert_ne!(nets["acme"][0], nets["initech"][0]);
    wa.destroy().ok();
    wb.destroy().ok();
}
}

acceptance! {
fn a_reservation_whose_lease_ended_before_the_apply_is_refused_naming_who_took_its_networks(tf: Tf) {
    let cluster = etcd_cluster::shared();
    let endpoints = cluster.endpoints();
    let prefix = prefix("lease");
    let block = etcd_block(&endpoints, &prefix, "");
    let (a, b) = (Lab::new(tf), Lab::new(tf));
    let wa = Workdir::new(tf, &format!("{}{}", a.provider(&format!("  reservation_ttl = \"3s\"\n{block}")), instance("acme", "  workers = 0\n")));
    wa.init();
    wa.tf(&["plan", "-out", "acme.tfplan"]).ok();
    // The reservation lives on a lease: its hold key is there, then etcd removes it.
    let hold = format!("{prefix}registry/holds/acme");
    let held = |c: &Cluster| {
        let out = c.etcdctl().args(["get", &hold, "--print-value-only"]).output().unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(held(cluster), "no hold key {hold} for the plan's reservation");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while held(cluster) {
        assert!(std::time::Instant::now() < deadline, "the lease of {hold} did not end");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // The other host now gets those networks (the expired reservation holds nothing).
    let wb = workdir_on(&b, &block, &instance("globex", "  workers = 0\n"));
    wb.apply().ok();
    let r = wa.tf(&["apply", "acme.tfplan"]).failed();
    let all = r.flat();
    assert!(all.contains("expired at"), "{all}");
    assert!(all.contains("globex"), "{all}");
    assert!(all.contains("run `terraform plan` again"), "{all}");
    wb.destroy().ok();
    wa.destroy().ok();
}
}

acceptance! {
fn wrong_credentials_a_tls_mismatch_and_an_unreachable_cluster_are_refused_at_plan_naming_the_endpoint(tf: Tf) {
    let lab = Lab::new(tf);
    // Auth on: a wrong password is refused, a user of the prefix works.
    let auth = Cluster::start(Options { members: 1, tls: false, auth: true });
    let prefix = "/team/";
    auth.add_user("lab", "s3cret-pw", prefix);
    let wrong = workdir_on(&lab, &etcd_block(&auth.endpoints(), prefix, "    username = \"lab\"\n    password = \"not-it\"\n"), &instance("acme", "  workers = 0\n"));
    let r = wrong.tf(&["plan"]).failed();
    let all = r.flat();
    assert!(all.contains("etcd registry refused the credentials"), "{all}");
    assert!(all.contains(&auth.endpoint(0)), "{all}");
    assert!(!all.contains("not-it"), "the password must never be shown: {all}");
    let right = workdir_on(&lab, &etcd_block(&auth.endpoints(), prefix, "    username = \"lab\"\n    password = \"s3cret-pw\"\n"), &instance("acme", "  workers = 0\n"));
    right.tf(&["plan"]).ok();
    // The password never reaches a log, even at TRACE.
    let mut traced = workdir_on(&lab, &etcd_block(&auth.endpoints(), prefix, "    username = \"lab\"\n    password = \"s3cret-pw\"\n"), &instance("hooli", "  workers = 0\n"));
    traced.env.push(("TF_LOG".into(), "TRACE".into()));
    let r = traced.tf(&["plan"]).ok();
    assert!(r.all().contains("homelab"), "no TRACE output");
    assert!(!r.all().contains("s3cret-pw"), "the password is in the TRACE log");
    // A prefix the user may not touch.
    let other = workdir_on(&lab, &etcd_block(&auth.endpoints(), "/elsewhere/", "    username = \"lab\"\n    password = \"s3cret-pw\"\n"), &instance("acme", "  workers = 0\n"));
    let all = other.tf(&["plan"]).failed().flat();
    assert!(all.contains("/elsewhere/"), "{all}");
    // TLS with client certificates: the right CA and certificate work; another CA is refused.
    let tls = Cluster::start(Options { members: 1, tls: true, auth: false });
    let (cert, key) = tls.client_cert().unwrap();
    let files = |ca: &std::path::Path| format!("    ca_file   = \"{}\"\n    cert_file = \"{}\"\n    key_file  = \"{}\"\n", ca.display(), cert.display(), key.display());
    let good = workdir_on(&lab, &etcd_block(&tls.endpoints(), "/tls/", &files(&tls.ca_file().unwrap())), &instance("acme", "  workers = 0\n"));
    good.tf(&["plan"]).ok();
    let bad = workdir_on(&lab, &etcd_block(&tls.endpoints(), "/tls/", &files(&tls.other_ca_file().unwrap())), &instance("acme", "  workers = 0\n"));
    let all = bad.tf(&["plan"]).failed().flat();
    assert!(all.contains("TLS connection failed"), "{all}");
    assert!(all.contains(&tls.endpoint(0)), "{all}");
    // http:// endpoints with TLS files are refused before anything is contacted.
    let mixed = workdir_on(&lab, &etcd_block(&[tls.endpoint(0).replace("https://", "http://")], "/tls/", &files(&tls.ca_file().unwrap())), &instance("acme", "  workers = 0\n"));
    let all = mixed.tf(&["plan"]).failed().flat();
    assert!(all.contains("Invalid provider setting `etcd.endpoints`"), "{all}");
    // Nobody listens: unreachable, naming the endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = workdir_on(&lab, &etcd_block(&[format!("http://127.0.0.1:{port}")], "/x/", ""), &instance("acme", "  workers = 0\n"));
    let all = gone.tf(&["plan"]).failed().flat();
    assert!(all.contains("etcd registry unreachable"), "{all}");
    assert!(all.contains(&format!("127.0.0.1:{port}")), "{all}");
    // None of these plans wrote anything where they were refused.
    let out = auth.etcdctl().args(["get", "/elsewhere/", "--prefix", "--keys-only"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}
}

acceptance! {
fn registry_migrate_moves_a_file_registry_into_etcd_and_the_workspace_carries_on(tf: Tf) {
    let endpoints = etcd_cluster::shared().endpoints();
    let prefix = prefix("migrate");
    let lab = Lab::new(tf);
    let body = instance("acme", "  workers = 0\n");
    let w = lab.workdir(&body);
    w.apply().ok();
    let before = w.resource("homelab_instance.acme").unwrap();
    // Another host already holds the first subnet in the target: the move is refused whole.
    let taken = store(endpoints.clone(), &prefix);
    let other = Lab::new(tf);
    let wo = workdir_on(&other, &etcd_block(&endpoints, &prefix, ""), &instance("hooli", &format!("  workers = 0\n  subnet = \"{}\"\n", before["subnet"].as_str().unwrap())));
    wo.apply().ok();
    let url = format!("etcd://{}{prefix}", endpoints[0].trim_start_matches("http://"));
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
            .args(["registry", "migrate", "--home", lab.home.path().to_str().unwrap(), "--to", &url])
            .output()
            .unwrap()
    };
    let refused = migrate();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("overlaps") && err.contains("`hooli`"), "{err}");
    assert_eq!(taken.load().unwrap().instances.keys().collect::<Vec<_>>(), vec!["hooli"]);
    wo.destroy().ok();
    // Now it moves, with an event, and the folder says where it went.
    let moved = migrate();
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    assert!(String::from_utf8_lossy(&moved.stdout).contains("moved instance acme"), "{}", String::from_utf8_lossy(&moved.stdout));
    let doc = taken.load().unwrap();
    assert_eq!(doc.instances["acme"].allocation.subnet.to_string(), before["subnet"].as_str().unwrap());
    assert_eq!(taken.events().unwrap().last().unwrap().action, "registry.migrate");
    taken.verify_events().unwrap();
    // The old folder's registry refuses to be used, saying where it went.
    let all = w.tf(&["plan"]).failed().flat();
    assert!(all.contains("was moved to") && all.contains(&url), "{all}");
    // With the etcd block, the same workspace plans nothing, and destroys.
    w.write(&format!("{}{body}", lab.provider(&etcd_block(&endpoints, &prefix, ""))));
    plan_is_empty(&w);
    w.destroy().ok();
    assert!(taken.load().unwrap().instances.is_empty());
}
}

acceptance! {
fn import_drift_and_the_reservation_commands_work_on_the_etcd_registry(tf: Tf) {
    let endpoints = etcd_cluster::shared().endpoints();
    let prefix = prefix("import");
    let block = etcd_block(&endpoints, &prefix, "");
    let lab = Lab::new(tf);
    let body = instance("acme", "  workers = 1\n");
    let first = workdir_on(&lab, &block, &body);
    first.apply().ok();
    // Another folder that knows nothing of it adopts it from the etcd registry.
    let second = workdir_on(&lab, &block, &body);
    let r = second.tf(&["import", "homelab_instance.acme", "acme"]).ok();
    assert!(r.stdout.contains("Import successful"), "{}", r.all());
    plan_is_empty(&second);
    let (s1, s2) = (first.resource("homelab_instance.acme").unwrap(), second.resource("homelab_instance.acme").unwrap());
    for a in ["subnet", "pod_cidr", "service_cidr", "nodes", "created_at", "backend", "workers", "host"] {
        assert_eq!(s1[a], s2[a], "attribute {a} differs after import");
    }
    // Drift: a node removed out of band is reported by refresh-only and repaired by apply.
    crate::util::netns::sh(&["ip", "netns", "del", &lab.ns("acme-worker-1")]);
    let r = second.tf(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(r.code, 2, "drift not reported:\n{}", r.all());
    second.apply().ok();
    plan_is_empty(&second);
    // The reservation commands on the etcd registry: a plan's reservation listed, then dropped.
    let planned = workdir_on(&lab, &block, &instance("hooli", "  workers = 0\n"));
    planned.tf(&["plan"]).ok();
    let url = format!("etcd://{}{prefix}", endpoints[0].trim_start_matches("http://"));
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab")).args(args).args(["--registry", &url]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["reservations", "list"]);
    assert!(listed.contains("hooli") && listed.contains("live"), "{listed}");
    assert!(cli(&["reservations", "drop", "hooli"]).contains("dropped hooli"));
    assert!(!cli(&["reservations", "list"]).contains("hooli"));
    let hold = crate::util::etcd_cluster::shared().etcdctl().args(["get", &format!("{prefix}registry/holds/hooli"), "--keys-only"]).output().unwrap();
    assert!(String::from_utf8_lossy(&hold.stdout).trim().is_empty(), "the dropped reservation's hold key is left");
    assert!(cli(&["registry", "check"]).contains("sound"));
    second.destroy().ok();
    assert!(store(endpoints, &prefix).load().unwrap().instances.is_empty());
}
}
