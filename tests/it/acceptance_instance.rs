//! Acceptance tests of `homelab_instance` on the `netns` backend, through the real Terraform
//! CLI (1.0.3 and the newest one) and real network namespaces. Each test has its own registry home and its own lab
//! host namespace (removed by a guard even when the test fails), shaped like HashiCorp's
//! acceptance steps: create+read, import+verify, update+read, destroy.

use homelab::registry::{Status, Store};

use crate::acceptance;
use crate::util::lab::{assert_in_place, inode, instance, plan_is_empty, Lab};
use crate::util::netns::{namespaces_of, sh, try_sh};
use crate::util::terraform::{Run, Workdir};

acceptance! {
fn create_shows_concrete_cidrs_at_plan_then_second_plan_is_empty_and_destroy_leaves_nothing(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&instance("acme", "  workers = 2\n"));
    // Step 1: the plan shows the networks themselves, never "known after apply".
    let plan = w.tf(&["plan"]).ok();
    for want in [
        "subnet         = \"192.168.56.0/24\"",
        "pod_cidr       = \"10.244.0.0/16\"",
        "service_cidr   = \"10.96.0.0/16\"",
        "gateway        = \"192.168.56.1\"",
    ] {
        assert!(plan.stdout.contains(want), "plan lacks {want}:\n{}", plan.stdout);
    }
    // The reservation keeps the plan honest: the same values again.
    let again = w.tf(&["plan"]).ok();
    assert!(again.stdout.contains("subnet         = \"192.168.56.0/24\""), "{}", again.stdout);
    // Step 2: apply builds it.
    w.apply().ok();
    let state = w.resource("homelab_instance.acme").unwrap();
    assert_eq!(state["state"], "running");
    assert_eq!(state["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(state["nodes"][0]["name"], "acme-cp-1");
    assert_eq!(state["nodes"][0]["ip"], "192.168.56.10");
    assert_eq!(state["nodes"][1]["ip"], "192.168.56.20");
    let nss = namespaces_of(&lab.host.name);
    for n in ["acme-cp-1", "acme-worker-1", "acme-worker-2"] {
        assert!(nss.contains(&lab.ns(n)), "{n} missing from {nss:?}");
    }
    let doc = lab.store().load().unwrap();
    assert_eq!(doc.instances["acme"].status, Status::Allocated);
    // Step 3: read finds everything as planned.
    plan_is_empty(&w);
    // Step 4: destroy leaves no namespace, no registry entry; the events are there and verify.
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty(), "{:?}", namespaces_of(&lab.host.name));
    let doc = lab.store().load().unwrap();
    assert!(doc.instances.is_empty(), "{:?}", doc.instances);
    let actions: Vec<String> = lab.store().events().unwrap().into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&"instance.reserve".to_string()), "{actions:?}");
    assert!(actions.contains(&"instance.allocate".to_string()), "{actions:?}");
    assert_eq!(actions.last().unwrap(), "instance.release");
    lab.store().verify_events().unwrap();
}
}

acceptance! {
fn import_adopts_registry_entry_and_lab_then_plan_is_empty(tf: Tf) {
    let lab = Lab::new(tf);
    let body = instance("acme", "  workers = 1\n");
    let first = lab.workdir(&body);
    first.apply().ok();
    // A second folder that knows nothing of it adopts it.
    let second = lab.workdir(&body);
    let r = second.tf(&["import", "homelab_instance.acme", "acme"]).ok();
    assert!(r.stdout.contains("Import successful"), "{}", r.all());
    plan_is_empty(&second);
    let s1 = first.resource("homelab_instance.acme").unwrap();
    let s2 = second.resource("homelab_instance.acme").unwrap();
    for a in ["subnet", "pod_cidr", "service_cidr", "gateway", "nodes", "created_at", "backend", "workers"] {
        assert_eq!(s1[a], s2[a], "attribute {a} differs after import");
    }
    second.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

acceptance! {
fn plain_create_of_a_name_that_exists_elsewhere_is_refused_at_plan(tf: Tf) {
    let lab = Lab::new(tf);
    let body = instance("acme", "  workers = 0\n");
    let first = lab.workdir(&body);
    first.apply().ok();
    let second = lab.workdir(&body);
    let r = second.tf(&["plan"]).failed();
    assert!(r.all().contains("already exists in the registry"), "{}", r.all());
    assert!(r.all().contains("terraform import"), "{}", r.all());
    first.destroy().ok();
}
}

acceptance! {
fn workers_update_in_place_and_untouched_nodes_stay(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&instance("acme", "  workers = 2\n"));
    w.apply().ok();
    let cp = inode(&lab.ns("acme-cp-1")).unwrap();
    let w1 = inode(&lab.ns("acme-worker-1")).unwrap();
    // 2 -> 3: one node added, nothing replaced.
    w.write(&format!("{}{}", lab.provider(""), instance("acme", "  workers = 3\n")));
    let plan = w.tf(&["plan"]).ok();
    assert_in_place(&plan);
    w.apply().ok();
    assert!(inode(&lab.ns("acme-worker-3")).is_some());
    assert_eq!(inode(&lab.ns("acme-cp-1")), Some(cp), "cp-1 was rebuilt");
    assert_eq!(inode(&lab.ns("acme-worker-1")), Some(w1), "worker-1 was rebuilt");
    // 3 -> 1: two nodes removed, the rest untouched.
    w.write(&format!("{}{}", lab.provider(""), instance("acme", "  workers = 1\n")));
    let plan = w.tf(&["plan"]).ok();
    assert_in_place(&plan);
    w.apply().ok();
    assert!(inode(&lab.ns("acme-worker-2")).is_none());
    assert!(inode(&lab.ns("acme-worker-3")).is_none());
    assert_eq!(inode(&lab.ns("acme-worker-1")), Some(w1));
    let doc = lab.store().load().unwrap();
    assert_eq!(doc.instances["acme"].lab.as_ref().unwrap().workers, 1);
    plan_is_empty(&w);
    w.destroy().ok();
}
}

acceptance! {
fn drift_node_namespace_removed_is_repaired_and_registry_entry_removed_is_brought_back_by_repair(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&instance("acme", "  workers = 1\n"));
    w.apply().ok();
    // Out of band: a node's namespace disappears.
    try_sh(&["ip", "netns", "del", &lab.ns("acme-worker-1")]);
    let plan = w.plan_exit();
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(plan.stdout.contains("acme-worker-1: missing") || plan.stdout.contains("degraded"), "{}", plan.stdout);
    assert_in_place(&plan);
    w.apply().ok();
    assert!(namespaces_of(&lab.host.name).contains(&lab.ns("acme-worker-1")));
    plan_is_empty(&w);
    // Out of band: the registry entry disappears. Its networks would be handed out again, so
    // the plan stops, naming the way back; `registry repair` brings the entry back from the
    // registry's previous version, and nothing needs re-creating.
    let path = lab.home.path().join("instances.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["instances"].as_object_mut().unwrap().remove("acme");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let plan = w.plan_exit();
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(plan.flat().contains("it lacks acme") && plan.flat().contains("registry repair"), "{}", plan.all());
    let repaired = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(["registry", "repair", "--home"])
        .arg(lab.home.path())
        .output()
        .unwrap();
    assert!(repaired.status.success(), "{}", String::from_utf8_lossy(&repaired.stderr));
    plan_is_empty(&w);
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

acceptance! {
fn seed_audit_acme_cannot_reach_globex_but_reaches_its_gateway(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&format!("{}{}", instance("acme", "  workers = 0\n"), instance("globex", "  workers = 0\n")));
    w.apply().ok();
    let globex = w.resource("homelab_instance.globex").unwrap();
    let acme = w.resource("homelab_instance.acme").unwrap();
    let globex_cp = globex["nodes"][0]["ip"].as_str().unwrap().to_string();
    let (ok, out) = lab.ping("acme-cp-1", &globex_cp);
    assert!(!ok, "acme reached globex: {out}");
    assert!(out.contains("unreachable"), "expected no route: {out}");
    let (ok, out) = lab.ping("acme-cp-1", acme["gateway"].as_str().unwrap());
    assert!(ok, "acme cannot reach its own gateway: {out}");
    w.destroy().ok();
}
}

acceptance! {
fn parallel_applies_in_separate_folders_sharing_a_home_get_distinct_values(tf: Tf) {
    let lab = Lab::new(tf);
    let names = ["acme", "globex", "initech"];
    let dirs: Vec<Workdir> = names.iter().map(|n| lab.workdir(&instance(n, "  workers = 0\n"))).collect();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = dirs.iter().map(|w| s.spawn(|| w.apply())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in runs {
        r.ok();
    }
    let mut seen = std::collections::HashSet::new();
    for (n, w) in names.iter().zip(&dirs) {
        let s = w.resource(&format!("homelab_instance.{n}")).unwrap();
        for a in ["subnet", "pod_cidr", "service_cidr"] {
            assert!(seen.insert(s[a].as_str().unwrap().to_string()), "{a} of {n} repeated");
        }
    }
    for w in &dirs {
        w.destroy().ok();
    }
}
}

acceptance! {
fn saved_plan_applied_after_its_networks_were_taken_fails_naming_the_new_holder(tf: Tf) {
    let lab = Lab::new(tf);
    let ttl = std::time::Duration::from_secs(12);
    let short = lab.provider(&format!("  reservation_ttl = \"{}s\"\n", ttl.as_secs()));
    let a = Workdir::new(tf, &format!("{short}{}", instance("acme", "  workers = 0\n")));
    a.init();
    let b = lab.workdir(&instance("globex", "  workers = 0\n"));
    let planned_at = std::time::Instant::now();
    a.tf(&["plan", "-out=acme.plan"]).ok();
    // While the reservation lives, another folder gets other values.
    let r = b.tf(&["plan"]).ok();
    assert!(planned_at.elapsed() < ttl, "the test machine is too slow for this TTL");
    assert!(r.stdout.contains("subnet         = \"192.168.57.0/24\""), "{}", r.stdout);
    // Once it expired, the other folder takes them.
    std::thread::sleep(ttl.saturating_sub(planned_at.elapsed()) + std::time::Duration::from_secs(2));
    b.write(&format!("{}{}", lab.provider(""), instance("globex", "  workers = 0\n  subnet = \"192.168.56.0/24\"\n")));
    b.apply().ok();
    let r = a.tf(&["apply", "acme.plan"]).failed();
    assert!(r.all().contains("globex"), "the error does not name the new holder:\n{}", r.all());
    assert!(r.all().contains("192.168.56.0/24"), "{}", r.all());
    // Nothing was built for acme, and it holds nothing.
    assert!(!namespaces_of(&lab.host.name).contains(&lab.ns("acme-cp-1")));
    let doc = lab.store().load().unwrap();
    assert!(doc.instances.get("acme").is_none_or(|e| e.status != Status::Allocated));
    assert_eq!(doc.instances["globex"].status, Status::Allocated);
    b.destroy().ok();
}
}

acceptance! {
/// A pin elsewhere takes over what a live plan chose automatically (the automatic values can
/// go anywhere, the pinned ones cannot); that plan, saved, then fails naming the new holder,
/// and planning again gives it free values. A pin never takes over another pin.
fn pinned_value_in_another_folder_takes_over_a_live_automatic_reservation(tf: Tf) {
    let lab = Lab::new(tf);
    let a = lab.workdir(&instance("acme", "  workers = 0\n"));
    a.tf(&["plan", "-out=acme.plan"]).ok();
    let b = lab.workdir(&instance("globex", "  workers = 0\n  subnet = \"192.168.56.0/24\"\n"));
    b.tf(&["plan"]).ok();
    let (ok, out) = provider_cli(&["reservations", "list", "--home", &lab.home.path().display().to_string()]);
    assert!(ok && out.contains("taken") && out.contains("taken over by `globex`"), "{out}");
    let r = a.tf(&["apply", "acme.plan"]).failed();
    assert!(r.all().contains("globex") && r.all().contains("192.168.56.0/24"), "{}", r.all());
    assert!(namespaces_of(&lab.host.name).is_empty());
    let events = lab.store().events().unwrap();
    assert!(events.iter().any(|e| e.action == "instance.reservation_taken" && e.subject == "acme"), "{events:?}");
    // Planned again, acme gets free values, and both apply.
    let r = a.tf(&["plan"]).ok();
    assert!(r.stdout.contains("subnet         = \"192.168.57.0/24\""), "{}", r.stdout);
    a.apply().ok();
    b.apply().ok();
    // A third folder pinning a subnet that globex pinned is refused, naming it.
    let c = lab.workdir(&instance("initech", "  workers = 0\n  subnet = \"192.168.56.0/24\"\n"));
    let r = c.tf(&["plan"]).failed();
    assert!(r.all().contains("instance `globex`") && r.all().contains("allocated"), "{}", r.all());
    a.destroy().ok();
    b.destroy().ok();
}
}

fn refused_at_plan(lab: &Lab, body: &str, expect: &[&str]) {
    let w = lab.workdir(body);
    let before = lab.registry_bytes();
    let r = w.tf(&["plan"]).failed();
    for e in expect {
        assert!(r.all().contains(e), "plan error lacks {e:?}:\n{}", r.all());
    }
    if body.matches("resource \"homelab_instance\"").count() == 1 {
        assert_eq!(lab.registry_bytes(), before, "a refused plan changed the registry");
    }
}

acceptance! {
fn bad_inputs_fail_at_plan_naming_the_other_side(tf: Tf) {
    let lab = Lab::new(tf);
    // Two instances of one configuration pinning overlapping subnets.
    refused_at_plan(
        &lab,
        &format!(
            "{}{}",
            instance("acme", "  workers = 0\n  subnet = \"192.168.60.0/24\"\n"),
            instance("globex", "  workers = 0\n  subnet = \"192.168.60.0/24\"\n")
        ),
        &["192.168.60.0/24", "overlaps", "reserved until"],
    );
    std::fs::remove_dir_all(lab.home.path()).unwrap();
    // A pod CIDR inside another instance's service CIDR.
    let w = lab.workdir(&instance("acme", "  workers = 0\n"));
    w.apply().ok();
    refused_at_plan(
        &lab,
        &instance("globex", "  workers = 0\n  pod_cidr = \"10.96.0.0/16\"\n"),
        &["pod_cidr 10.96.0.0/16 overlaps 10.96.0.0/16", "service_cidr of instance `acme`", "allocated"],
    );
    // A bad name.
    refused_at_plan(
        &lab,
        "resource \"homelab_instance\" \"bad\" {\n  name = \"Bad_Name\"\n  workers = 0\n}\n",
        &["Invalid instance name", "lowercase DNS label"],
    );
    w.destroy().ok();
}
}

acceptance! {
fn exhausted_pool_is_refused_at_plan_naming_pool_capacity_and_holders(tf: Tf) {
    let lab = Lab::new(tf);
    let small = lab.provider("  host_pool = \"192.168.56.0/23\"\n");
    let w = Workdir::new(tf, &format!("{small}{}{}", instance("acme", "  workers = 0\n"), instance("globex", "  workers = 0\n")));
    w.init();
    w.apply().ok();
    let x = Workdir::new(tf, &format!("{small}{}", instance("initech", "  workers = 0\n")));
    x.init();
    let before = lab.registry_bytes();
    let r = x.tf(&["plan"]).failed();
    for e in ["host_pool 192.168.56.0/23 is full", "all 2 /24 slots", "acme", "globex"] {
        assert!(r.all().contains(e), "lacks {e:?}:\n{}", r.all());
    }
    assert_eq!(lab.registry_bytes(), before);
    w.destroy().ok();
}
}

acceptance! {
fn subnet_overlapping_a_host_route_is_refused_at_plan_naming_the_route(tf: Tf) {
    // The "host" is a namespace of the test's own: the root namespace is never changed.
    let lab = Lab::new(tf);
    let hostns = format!("{}-fakehost", lab.host.name);
    sh(&["ip", "netns", "add", &hostns]);
    // Terraform talks to the plugin over 127.0.0.1.
    sh(&["ip", "-n", &hostns, "link", "set", "lo", "up"]);
    // A LAN interface (a bridge: the dummy driver is not always available) with a route.
    sh(&["ip", "-n", &hostns, "link", "add", "lan0", "type", "bridge"]);
    sh(&["ip", "-n", &hostns, "link", "set", "lan0", "up"]);
    sh(&["ip", "-n", &hostns, "route", "add", "192.168.56.0/22", "dev", "lan0"]);
    let mut w = lab.workdir(&instance("acme", "  workers = 0\n  subnet = \"192.168.57.0/24\"\n"));
    w.netns = Some(hostns.clone());
    let before = lab.registry_bytes();
    let r = w.tf(&["plan"]).failed();
    assert!(r.all().contains("192.168.56.0/22") && r.all().contains("lan0"), "{}", r.all());
    assert_eq!(lab.registry_bytes(), before);
    // Automatic allocation skips the slots the host uses.
    w.write(&format!("{}{}", lab.provider(""), instance("acme", "  workers = 0\n")));
    let r = w.tf(&["plan"]).ok();
    assert!(r.stdout.contains("subnet         = \"192.168.60.0/24\""), "{}", r.stdout);
}
}

/// Run the provider binary's own subcommands.
fn provider_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

acceptance! {
fn reservations_left_by_a_plan_are_visible_listed_and_dropped_with_an_event(tf: Tf) {
    let lab = Lab::new(tf);
    let body = format!(
        "{}data \"homelab_cidr_allocation\" \"acme\" {{\n  name = \"acme\"\n  depends_on = []\n}}\noutput \"acme\" {{\n  value = data.homelab_cidr_allocation.acme\n}}\n",
        instance("acme", "  workers = 0\n")
    );
    let w = lab.workdir(&body);
    // A plan that is never applied leaves a reservation behind.
    w.tf(&["plan"]).ok();
    let probe = Workdir::new(tf, &format!(
        "{}data \"homelab_cidr_allocation\" \"acme\" {{\n  name = \"acme\"\n}}\noutput \"acme\" {{\n  value = data.homelab_cidr_allocation.acme\n}}\n",
        lab.provider("")
    ));
    probe.init();
    probe.apply().ok();
    let v = &probe.outputs()["acme"]["value"];
    assert_eq!(v["status"], "reserved", "{v}");
    assert_eq!(v["subnet"], "192.168.56.0/24");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(v["pools"]["host"]["used"], 1);
    // Listed, then dropped before expiry, with an event.
    let home = lab.home.path().display().to_string();
    let (ok, out) = provider_cli(&["reservations", "list", "--home", &home]);
    assert!(ok && out.contains("acme") && out.contains("live") && out.contains("192.168.56.0/24"), "{out}");
    let (ok, out) = provider_cli(&["reservations", "drop", "--home", &home, "acme"]);
    assert!(ok && out.contains("dropped acme"), "{out}");
    probe.apply().ok();
    assert_eq!(probe.outputs()["acme"]["value"]["status"], "free");
    let events = lab.store().events().unwrap();
    assert_eq!(events.last().unwrap().action, "instance.reservation_drop");
    let (ok, out) = provider_cli(&["events", "verify", "--home", &home]);
    assert!(ok && out.starts_with("ok:"), "{out}");
    // Allocated instances are never dropped.
    w.apply().ok();
    let (ok, out) = provider_cli(&["reservations", "drop", "--home", &home, "--all"]);
    assert!(ok && out.contains("0 reservation(s) dropped"), "{out}");
    assert!(lab.store().load().unwrap().instances.contains_key("acme"));
    w.destroy().ok();
}
}

acceptance! {
fn plan_without_cap_net_admin_fails_saying_so_and_how_to_run(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&instance("acme", "  workers = 0\n"));
    // Terraform and the provider without CAP_NET_ADMIN (root otherwise).
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"])
        .arg(tf.bin())
        .args(["plan", "-no-color", "-input=false"])
        .current_dir(w.path())
        .env("TF_CLI_CONFIG_FILE", crate::util::terraform::cli_config())
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("CAP_NET_ADMIN"), "{all}");
    assert!(all.contains("sudo") || all.contains("root"), "{all}");
    assert!(lab.registry_bytes().is_none(), "a refused plan wrote the registry");
}
}

acceptance! {
fn provider_survives_sigint_and_logs_reach_terraform_under_tf_log(tf: Tf) {
    // Ctrl-C reaches the whole foreground process group: the provider must not die of it.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .env("TF_PLUGIN_MAGIC_COOKIE", "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2")
        .env("PLUGIN_PROTOCOL_VERSIONS", "6")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("1|6|tcp|127.0.0.1:"), "handshake: {line}");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the provider died of SIGINT");
    child.kill().unwrap();
    child.wait().unwrap();

    // Its tracing lines show up in Terraform's log at their level.
    let lab = Lab::new(tf);
    let mut w = lab.workdir(&instance("acme", "  workers = 0\n"));
    w.env.push(("TF_LOG".into(), "INFO".into()));
    let r = w.apply().ok();
    assert!(r.stderr.contains("homelab provider configured"), "{}", r.stderr);
    assert!(r.stderr.contains("[INFO]  provider.terraform-provider-homelab"), "{}", r.stderr);
    w.env.clear();
    w.destroy().ok();
}
}

acceptance! {
fn whole_lab_gone_plans_a_recreate_with_the_same_networks_and_holds_nothing_allocated(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&format!("{}{}", instance("acme", "  workers = 1\n"), instance("globex", "  workers = 0\n")));
    w.apply().ok();
    let before = w.resource("homelab_instance.acme").unwrap();
    // As after a reboot: every namespace of the lab host is gone.
    for ns in namespaces_of(&lab.host.name) {
        sh(&["ip", "netns", "del", &ns]);
    }
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("homelab_instance.acme will be created"), "{}", r.stdout);
    // Its networks stay reserved for it (not allocated to a lab that does not exist).
    let doc = lab.store().load().unwrap();
    assert_eq!(doc.instances["acme"].status, Status::Reserved);
    let events = lab.store().events().unwrap();
    assert!(events.iter().any(|e| e.action == "instance.lab_gone" && e.subject == "acme"));
    w.apply().ok();
    let after = w.resource("homelab_instance.acme").unwrap();
    for a in ["subnet", "pod_cidr", "service_cidr"] {
        assert_eq!(before[a], after[a], "{a} changed across the re-create");
    }
    assert_eq!(after["state"], "running");
    w.destroy().ok();
    assert!(lab.store().load().unwrap().instances.is_empty());
}
}
