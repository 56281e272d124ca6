//! Acceptance test of the ways back from a damaged registry, through the real Terraform CLI on
//! the `netns` backend: a lab of two federated instances whose `instances.json` is damaged
//! three ways (an older generation copied over it, garbage, an entry removed by hand). Each
//! time `terraform plan` fails naming `registry repair`; after `registry repair` the plan is
//! empty and the federated pair still pings as before. Pings run only between namespaces of
//! the test's own lab host.

use std::process::Command;

use homelab::registry::generations;

use crate::acceptance;
use crate::util::lab::{instance, plan_is_empty, Lab};
use crate::util::netns::namespaces_of;
use crate::util::terraform::Workdir;

fn config() -> String {
    format!(
        "{}{}resource \"homelab_federation\" \"acme_globex\" {{\n  instances = [homelab_instance.acme.name, homelab_instance.globex.name]\n  reason = \"repair test\"\n}}\n",
        instance("acme", "  workers = 0\n"),
        instance("globex", "  workers = 0\n")
    )
}

/// `terraform-provider-homelab <args> --home <home>`: exit code and output.
fn cli(lab: &Lab, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(args)
        .arg("--home")
        .arg(lab.home.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The control plane IP of an instance, from the state.
fn cp_ip(w: &Workdir, name: &str) -> String {
    w.resource(&format!("homelab_instance.{name}")).unwrap()["nodes"][0]["ip"].as_str().unwrap().to_string()
}

/// acme and globex reach each other both ways.
fn pair_pings(lab: &Lab, w: &Workdir) {
    let (a, g) = (cp_ip(w, "acme"), cp_ip(w, "globex"));
    let (ok, out) = lab.ping("acme-cp-1", &g);
    assert!(ok, "acme -> globex: {out}");
    let (ok, out) = lab.ping("globex-cp-1", &a);
    assert!(ok, "globex -> acme: {out}");
}

/// The damage is seen by `terraform plan` and `registry check`, and `registry repair` brings
/// the registry back: an empty plan, the pair pings, the check is clean.
fn fails_then_repairs(lab: &Lab, w: &Workdir, what: &str, check_says: &str) {
    let r = w.tf(&["plan"]).failed();
    let flat = r.flat();
    assert!(flat.contains("registry repair"), "{what}: the plan's error does not name `registry repair`:\n{}", r.all());
    let (code, out) = cli(lab, &["registry", "check"]);
    assert_eq!(code, 1, "{what}: {out}");
    assert!(out.contains(check_says), "{what}: check does not say {check_says:?}:\n{out}");
    let (code, out) = cli(lab, &["registry", "repair"]);
    assert_eq!(code, 0, "{what}: {out}");
    assert!(out.contains("recorded event seq") && out.contains("next: run `terraform plan`"), "{what}: {out}");
    plan_is_empty(w);
    pair_pings(lab, w);
    let (code, out) = cli(lab, &["registry", "check"]);
    assert_eq!(code, 0, "{what}: after repair: {out}");
}

acceptance! {
fn damaged_registry_stops_plans_naming_repair_and_repair_brings_the_lab_back(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&config());
    // Step 1: two instances and their federation; the pair pings.
    w.apply().ok();
    pair_pings(&lab, &w);
    plan_is_empty(&w);
    let path = lab.home.path().join("instances.json");

    // Step 2: an older generation copied over the file (`cp` writes into it).
    let (oldest, gen) = generations::list(lab.home.path()).into_iter().last().unwrap();
    std::fs::copy(&gen, &path).unwrap();
    fails_then_repairs(&lab, &w, &format!("generation {oldest} copied over"), "an older copy was restored");

    // Step 3: garbage.
    std::fs::write(&path, b"this is not json\n").unwrap();
    fails_then_repairs(&lab, &w, "garbage", "not a registry document");

    // Step 4: an entry removed by hand.
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["instances"].as_object_mut().unwrap().remove("globex");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    fails_then_repairs(&lab, &w, "entry removed", "removed: globex");

    // Step 5: the repairs are in the event log, whose chain verifies; destroy leaves nothing.
    let actions: Vec<String> = homelab::registry::Store::events(&lab.store()).unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions.iter().filter(|a| *a == "registry.repair").count(), 3, "{actions:?}");
    homelab::registry::Store::verify_events(&lab.store()).unwrap();
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty());
}
}
