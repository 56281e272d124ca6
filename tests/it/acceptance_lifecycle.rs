//! Acceptance tests of the lifecycle commands users type beyond plan/apply/destroy, and of the
//! rules that keep two resources, two workspaces or two orders of Terraform's calls from
//! sharing or stranding anything: `-replace`, `taint`, duplicate names, renamed addresses,
//! workspaces on one home, `-refresh-only -detailed-exitcode`, pinned next to automatic
//! networks on fresh homes, and failed plans. Real Terraform (1.0.3 and the newest), real
//! namespaces, one registry home and lab host per test.

use homelab::registry::{Status, Store};

use crate::acceptance;
use crate::util::lab::{instance, plan_is_empty, Lab};
use crate::util::netns::{namespaces_of, sh};
use crate::util::terraform::Workdir;

/// The value of `attr` in the plan's text for the resource block starting at `address`.
fn planned(plan: &str, address: &str, attr: &str) -> Option<String> {
    let start = plan.find(&format!("# {address} "))?;
    let block = &plan[start..];
    let end = block[1..].find("\n  # ").map(|i| i + 1).unwrap_or(block.len());
    block[..end].lines().find_map(|l| {
        let l = l.trim_start().trim_start_matches(['+', '~', ' ']);
        let (k, v) = l.split_once('=')?;
        (k.trim() == attr).then(|| v.trim().trim_matches('"').to_string())
    })
}

acceptance! {
/// `-replace` and `taint` tear the lab down and build it again under the same name and
/// networks, as a replace-forcing change does.
fn replace_and_taint_rebuild_the_lab_with_the_same_name_and_networks(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&instance("acme", "  workers = 1\n"));
    w.apply().ok();
    let before = w.resource("homelab_instance.acme").unwrap();
    // A rebuilt lab has a new creation time (whole seconds) and a release and an allocation
    // in the audit log. (Namespace inode numbers are reused by the kernel: no proof.)
    let rebuilt = |since: &serde_json::Value, releases: usize| {
        let now = w.resource("homelab_instance.acme").unwrap();
        assert_ne!(now["created_at"], since["created_at"], "the lab was not rebuilt");
        let actions: Vec<String> = lab.store().events().unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions.iter().filter(|a| *a == "instance.release").count(), releases, "{actions:?}");
        assert!(namespaces_of(&lab.host.name).contains(&lab.ns("acme-cp-1")));
        now
    };
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Step 1: -replace plans a replacement (and nothing else), then rebuilds.
    let r = w.tf(&["plan", "-replace=homelab_instance.acme"]).ok();
    assert!(r.stdout.contains("homelab_instance.acme will be replaced, as requested"), "{}", r.stdout);
    assert!(r.stdout.contains("1 to add, 0 to change, 1 to destroy"), "{}", r.stdout);
    w.tf(&["apply", "-auto-approve", "-replace=homelab_instance.acme"]).ok();
    let after = w.resource("homelab_instance.acme").unwrap();
    for a in ["subnet", "pod_cidr", "service_cidr", "nodes"] {
        assert_eq!(before[a], after[a], "{a} changed across -replace");
    }
    assert_eq!(after["state"], "running");
    let after = rebuilt(&before, 1);
    plan_is_empty(&w);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Step 2: taint does the same.
    w.tf(&["taint", "homelab_instance.acme"]).ok();
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("is tainted, so must be replaced"), "{}", r.stdout);
    w.apply().ok();
    let again = rebuilt(&after, 2);
    assert_eq!(again["subnet"], before["subnet"]);
    plan_is_empty(&w);
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

acceptance! {
/// A federated instance cannot be replaced (its destroy would be refused): `-replace`,
/// `taint` and a replace-forcing change are all refused at plan, saying what to do.
fn replacing_a_federated_instance_is_refused_at_plan(tf: Tf) {
    let lab = Lab::new(tf);
    let body = |control_planes: u32| {
        format!(
            "{}{}resource \"homelab_federation\" \"ag\" {{\n  instances = [homelab_instance.acme.name, homelab_instance.globex.name]\n  reason = \"INC-1\"\n}}\n",
            instance("acme", &format!("  workers = 0\n  control_planes = {control_planes}\n")),
            instance("globex", "  workers = 0\n")
        )
    };
    let w = lab.workdir(&body(1));
    w.apply().ok();
    let events = lab.store().events().unwrap().len();
    let refusal = "Instance `acme` is federated and cannot be replaced";
    let r = w.tf(&["plan", "-replace=homelab_instance.acme"]).failed();
    assert!(r.flat().contains(refusal) && r.flat().contains("acme+globex") && r.flat().contains("Destroy the federation first"), "{}", r.all());
    w.tf(&["taint", "homelab_instance.acme"]).ok();
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains(refusal), "{}", r.all());
    w.tf(&["untaint", "homelab_instance.acme"]).ok();
    w.write(&format!("{}{}", lab.provider(""), body(2)));
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains(refusal) && r.flat().contains("Changing `control_planes` replaces it"), "{}", r.all());
    assert_eq!(lab.store().events().unwrap().len(), events, "a refused plan wrote events");
    w.write(&format!("{}{}", lab.provider(""), body(1)));
    plan_is_empty(&w);
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

acceptance! {
/// Two resources with one `name` are refused at plan naming both, whether both are new or
/// one is in state; nothing is made. A renamed address needs a `moved` block (or
/// `terraform state mv`), and is refused at plan without one.
fn two_resources_with_one_name_are_refused_at_plan_naming_both(tf: Tf) {
    let lab = Lab::new(tf);
    let res = |label: &str| format!("resource \"homelab_instance\" \"{label}\" {{\n  name    = \"acme\"\n  workers = 0\n}}\n");
    // Step 1: both new.
    let w = lab.workdir(&format!("{}{}", res("first"), res("second")));
    let r = w.tf(&["plan"]).failed();
    let all = r.flat();
    assert!(all.contains("Instance name `acme` is used by two resources"), "{all}");
    assert!(all.contains("homelab_instance.first (main.tf:") && all.contains("homelab_instance.second (main.tf:"), "{all}");
    let r = w.apply().failed();
    assert!(r.flat().contains("used by two resources"), "{}", r.all());
    assert!(namespaces_of(&lab.host.name).is_empty(), "{:?}", namespaces_of(&lab.host.name));
    let doc = lab.store().load().unwrap();
    assert!(doc.instances.is_empty(), "a refused plan left {:?}", doc.instances);
    // Step 2: one in state, a second one added.
    w.write(&format!("{}{}", lab.provider(""), res("first")));
    w.apply().ok();
    w.write(&format!("{}{}{}", lab.provider(""), res("first"), res("second")));
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains("used by two resources") && r.flat().contains("homelab_instance.second"), "{}", r.all());
    // -target of the new one alone (the one in state is not planned): refused too.
    let r = w.tf(&["plan", "-target=homelab_instance.second"]).failed();
    assert!(r.flat().contains("already exists"), "{}", r.all());
    // Step 3: renamed without a move: refused, saying how. (Terraform before 1.3 does not
    // plan destroys with the provider: there, the apply refuses the create while the old
    // address holds the lab.)
    w.write(&format!("{}{}", lab.provider(""), res("renamed")));
    if tf.at_least(1, 3) {
        let r = w.tf(&["plan"]).failed();
        assert!(r.flat().contains("add a `moved` block"), "{}", r.all());
    }
    // With the move (a `moved` block from 1.1, `state mv` before), nothing changes.
    if tf.at_least(1, 1) {
        w.write(&format!("{}{}moved {{\n  from = homelab_instance.first\n  to   = homelab_instance.renamed\n}}\n", lab.provider(""), res("renamed")));
        let r = w.tf(&["plan"]).ok();
        assert!(r.stdout.contains("homelab_instance.first has moved to homelab_instance.renamed"), "{}", r.stdout);
        w.apply().ok();
    } else {
        w.tf(&["state", "mv", "homelab_instance.first", "homelab_instance.renamed"]).ok();
    }
    plan_is_empty(&w);
    assert_eq!(lab.store().load().unwrap().instances["acme"].status, Status::Allocated);
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

acceptance! {
/// Two folders, and two `terraform workspace`s of one folder, sharing a home: the second to
/// plan a name is refused at its own plan, naming the first; other names get other values.
fn workspaces_sharing_a_home_never_share_an_instance(tf: Tf) {
    let lab = Lab::new(tf);
    let first = lab.workdir(&instance("acme", "  workers = 0\n"));
    first.tf(&["plan"]).ok();
    let second = lab.workdir(&instance("acme", "  workers = 0\n"));
    let r = second.tf(&["plan"]).failed();
    let dir = first.path().canonicalize().unwrap().display().to_string();
    assert!(r.flat().contains("is planned by another configuration") && r.flat().contains(&dir), "{}", r.all());
    // Once the first applied, the second is told it exists and whose it is.
    first.apply().ok();
    let r = second.tf(&["plan"]).failed();
    assert!(r.flat().contains("already exists") && r.flat().contains(&dir), "{}", r.all());
    // Another Terraform workspace of the first folder is another configuration too.
    first.tf(&["workspace", "new", "staging"]).ok();
    let r = first.tf(&["plan"]).failed();
    assert!(r.flat().contains("already exists") && r.flat().contains("workspace `default`"), "{}", r.all());
    // Another name gets other values.
    first.write(&format!("{}{}", lab.provider(""), instance("globex", "  workers = 0\n")));
    let r = first.tf(&["plan"]).ok();
    assert_eq!(planned(&r.stdout, "homelab_instance.globex", "subnet").as_deref(), Some("192.168.57.0/24"), "{}", r.stdout);
    first.tf(&["workspace", "select", "default"]).ok();
    first.write(&format!("{}{}", lab.provider(""), instance("acme", "  workers = 0\n")));
    plan_is_empty(&first);
    first.destroy().ok();
}
}

acceptance! {
/// Right after an apply, `plan -refresh-only -detailed-exitcode` finds nothing (exit 0), as
/// drift-detection pipelines expect; a real drift makes it 2.
fn refresh_only_detailed_exitcode_is_zero_after_apply_and_two_on_drift(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&format!("{}{}", instance("acme", "  workers = 1\n"), instance("globex", "  workers = 0\n  subnet = \"192.168.60.0/24\"\n")));
    w.apply().ok();
    let r = w.tf(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(r.code, 0, "refresh-only after apply reports a change:\n{}", r.all());
    w.tf(&["apply", "-refresh-only", "-auto-approve"]).ok();
    let r = w.tf(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    sh(&["ip", "netns", "del", &lab.ns("acme-worker-1")]);
    let r = w.tf(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(r.code, 2, "drift not reported:\n{}", r.all());
    w.apply().ok();
    w.destroy().ok();
}
}

acceptance! {
/// An automatic instance next to one pinning the network the automatic one would get first
/// (the issue's `pod_cidr = "10.96.0.0/16"`, and the usual pod CIDR 10.244.0.0/16): on fresh
/// homes, whatever order Terraform plans them in, the first plan succeeds, and no plan ever
/// needs `reservations drop`.
fn pinned_next_to_automatic_plans_on_fresh_homes_whatever_the_order(tf: Tf) {
    let config = format!(
        "{}{}{}",
        instance("acme", "  workers = 0\n"),
        instance("globex", "  workers = 0\n  pod_cidr = \"10.96.0.0/16\"\n"),
        instance("initech", "  workers = 0\n  pod_cidr = \"10.244.0.0/16\"\n")
    );
    for round in 0..10 {
        let lab = Lab::new(tf);
        let w = lab.workdir(&config);
        let r = w.tf(&["plan"]);
        assert_eq!(r.code, 0, "round {round}: the first plan on a fresh home failed:\n{}", r.all());
        let service = planned(&r.stdout, "homelab_instance.acme", "service_cidr").unwrap();
        let pod = planned(&r.stdout, "homelab_instance.acme", "pod_cidr").unwrap();
        assert_ne!(service, "10.96.0.0/16", "round {round}");
        assert_ne!(pod, "10.244.0.0/16", "round {round}");
        // Planned again: the same values.
        let again = w.tf(&["plan"]).ok();
        assert_eq!(planned(&again.stdout, "homelab_instance.acme", "service_cidr").unwrap(), service);
        if round == 0 {
            w.apply().ok();
            plan_is_empty(&w);
            w.destroy().ok();
        }
    }
}
}

acceptance! {
/// A pin Terraform only learns at plan (from a variable, unknown at validation) can still lose
/// the race to an automatic instance of the same plan: that plan fails once, saying so, and
/// the next one converges, with nothing to drop by hand.
fn pin_known_only_at_plan_converges_on_the_next_plan_without_a_manual_drop(tf: Tf) {
    let config = format!(
        "variable \"pod\" {{\n  default = \"10.96.0.0/16\"\n}}\n{}{}",
        instance("acme", "  workers = 0\n"),
        instance("globex", "  workers = 0\n  pod_cidr = var.pod\n")
    );
    let mut failed_first = 0;
    for round in 0..6 {
        let lab = Lab::new(tf);
        let w = lab.workdir(&config);
        let r = w.tf(&["plan"]);
        if r.code != 0 {
            failed_first += 1;
            assert!(r.flat().contains("Terraform planned instance `acme` first") && r.flat().contains("run `terraform plan`"), "round {round}:\n{}", r.all());
            // The failed plan left only the pin.
            let doc = lab.store().load().unwrap();
            assert_eq!(doc.instances.keys().collect::<Vec<_>>(), vec!["globex"], "round {round}");
            w.tf(&["plan"]).ok();
        }
        w.apply().ok();
        plan_is_empty(&w);
        w.destroy().ok();
    }
    eprintln!("first plans that lost the race: {failed_first} of 6");
}
}

acceptance! {
/// A plan that fails (16 instances on the 8 subnets of the default pool) leaves no
/// reservation in the way: shrinking to 8 plans and applies, every time, on fresh homes.
fn failed_plan_of_too_many_instances_leaves_nothing_in_the_way(tf: Tf) {
    let config = |count: u32| format!("resource \"homelab_instance\" \"k\" {{\n  count   = {count}\n  name    = \"k${{count.index}}\"\n  workers = 0\n}}\n");
    for round in 0..3 {
        let lab = Lab::new(tf);
        let w = lab.workdir(&config(16));
        let r = w.tf(&["plan"]).failed();
        assert!(r.flat().contains("host_pool 192.168.56.0/21 is full"), "{}", r.all());
        let doc = lab.store().load().unwrap();
        assert!(doc.instances.is_empty(), "round {round}: the failed plan left {:?}", doc.instances.keys().collect::<Vec<_>>());
        w.write(&format!("{}{}", lab.provider(""), config(8)));
        if round == 0 {
            w.apply().ok();
            plan_is_empty(&w);
            w.destroy().ok();
        } else {
            w.tf(&["plan"]).ok();
        }
    }
}
}

acceptance! {
/// `terraform import` of a federation adopts its reason, namespaces, creation time, routes and
/// policies: the plan after it is empty. On Terraform 1.5+ also through `import` blocks with
/// `-generate-config-out`.
fn federation_import_adopts_every_attribute_without_a_diff(tf: Tf) {
    let lab = Lab::new(tf);
    let body = format!(
        "{}{}resource \"homelab_federation\" \"ag\" {{\n  instances  = [homelab_instance.acme.name, homelab_instance.globex.name]\n  reason     = \"INC-1234: test the API client\"\n  namespaces = [\"default\", \"apps\"]\n}}\n",
        instance("acme", "  workers = 0\n"),
        instance("globex", "  workers = 0\n")
    );
    let first = lab.workdir(&body);
    first.apply().ok();
    let original = first.resource("homelab_federation.ag").unwrap();
    let second = lab.workdir(&body);
    for (addr, id) in [("homelab_instance.acme", "acme"), ("homelab_instance.globex", "globex"), ("homelab_federation.ag", "acme+globex")] {
        second.tf(&["import", addr, id]).ok();
    }
    plan_is_empty(&second);
    let imported = second.resource("homelab_federation.ag").unwrap();
    for a in ["id", "reason", "namespaces", "created_at", "routes", "policies", "state"] {
        assert_eq!(original[a], imported[a], "{a} differs after import");
    }
    if tf.at_least(1, 5) {
        // A third folder writes the configuration from the import blocks.
        let third = Workdir::new(tf, &format!(
            "{}import {{\n  to = homelab_instance.acme\n  id = \"acme\"\n}}\nimport {{\n  to = homelab_federation.ag\n  id = \"acme+globex\"\n}}\n{}resource \"homelab_instance\" \"globex\" {{\n  name    = \"globex\"\n  workers = 0\n}}\nimport {{\n  to = homelab_instance.globex\n  id = \"globex\"\n}}\n",
            lab.provider(""),
            instance("acme", "  workers = 0\n")
        ));
        third.init();
        third.tf(&["plan", "-generate-config-out=generated.tf"]).ok();
        let generated = std::fs::read_to_string(third.path().join("generated.tf")).unwrap();
        assert!(generated.contains("reason") && generated.contains("INC-1234: test the API client"), "{generated}");
        assert!(generated.contains("\"apps\""), "{generated}");
        third.apply().ok();
        plan_is_empty(&third);
    }
    second.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}

/// A plan with `body` fails, and what it says contains every one of `expect`.
fn refused(lab: &Lab, body: &str, expect: &[&str]) {
    let w = lab.workdir(body);
    let r = w.tf(&["plan"]).failed();
    let all = r.flat();
    assert!(!all.contains("Request cancelled") && !all.contains("panicked"), "the provider crashed:\n{all}");
    for e in expect {
        assert!(all.contains(e), "lacks {e:?}:\n{all}");
    }
}

acceptance! {
/// Inputs that used to crash the provider or give a message without the attribute: each is
/// refused at plan, naming the attribute, what is wrong and what to do.
fn bad_inputs_are_refused_at_plan_naming_the_attribute_never_a_crash(tf: Tf) {
    let lab = Lab::new(tf);
    let with = |extra: &str, body: &str| format!("{}{body}", lab.provider(extra));
    // Durations past their maximum (a date overflow and a Duration overflow before).
    let w = Workdir::new(tf, &with("  reservation_ttl = \"9999999999h\"\n", &instance("acme", "  workers = 0\n")));
    w.init();
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains("reservation_ttl") && r.flat().contains("the maximum is 720h"), "{}", r.all());
    refused(&lab, &instance("acme", "  workers = 0\n  timeouts {\n    create = \"99999999999h\"\n  }\n"), &["timeouts.create", "24h"]);
    refused(&lab, &instance("acme", "  workers = 0\n  timeouts {\n    delete = \"0s\"\n  }\n"), &["timeouts.delete", "longer than 0s"]);
    // Fractions where whole numbers are meant.
    refused(&lab, &instance("acme", "  workers = 1.5\n"), &["Invalid workers", "1.5 is not a whole number"]);
    refused(&lab, &instance("acme", "  workers = 0\n  memory_mb = 2048.5\n"), &["Invalid memory_mb", "2048.5 is not a whole number"]);
    let w = Workdir::new(tf, &with("  host_prefix = 24.5\n", &instance("acme", "  workers = 0\n")));
    w.init();
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains("host_prefix") && r.flat().contains("not a whole number"), "{}", r.all());
    // `home` at a file.
    let file = lab.home.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let at_file = format!(
        "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n}}\n{}",
        file.display(),
        lab.host.name,
        instance("acme", "  workers = 0\n")
    );
    let w = Workdir::new(tf, &at_file);
    w.init();
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains("`home`") && r.flat().contains("is a file, not a folder"), "{}", r.all());
    // A pin known only at plan that is not a network (once silently replaced by "any").
    refused(
        &lab,
        &format!("variable \"s\" {{\n  default = \"192.168.56.5/24\"\n}}\n{}", instance("acme", "  workers = 0\n  subnet = var.s\n")),
        &["Invalid subnet", "host bits set", "192.168.56.0/24"],
    );
    // Special-purpose ranges, for every kind of network and every pool.
    for (attr, cidr, what) in [
        ("subnet", "0.0.0.0/24", "unspecified"),
        ("subnet", "224.0.0.0/24", "multicast"),
        ("subnet", "255.255.255.0/24", "limited broadcast"),
        ("pod_cidr", "127.0.0.0/16", "loopback"),
        ("service_cidr", "169.254.0.0/16", "link-local"),
        ("service_cidr", "240.0.0.0/16", "reserved"),
    ] {
        refused(&lab, &instance("acme", &format!("  workers = 0\n  {attr} = \"{cidr}\"\n")), &[&format!("Invalid {attr}"), what, "special-purpose"]);
    }
    let w = Workdir::new(tf, &with("  pod_pool = \"224.0.0.0/12\"\n", &instance("acme", "  workers = 0\n")));
    w.init();
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains("pod_pool") && r.flat().contains("multicast"), "{}", r.all());
    assert!(lab.store().load().unwrap().instances.is_empty());
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}
