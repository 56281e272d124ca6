//! Acceptance tests of the foundation through the real Terraform 1.0.3 CLI, offline, in
//! temporary folders: the provider is found by `terraform init`, its schema is complete and
//! described, the data source shows the defaults on an empty home without writing anything,
//! a bad provider configuration fails at plan naming the attribute, and docs/ is generated.

use std::path::Path;

use crate::acceptance;
use crate::util::terraform::{repo_root, Workdir};

fn provider(home: &Path, extra: &str) -> String {
    format!("provider \"homelab\" {{\n  home = \"{}\"\n{extra}}}\n", home.display())
}

const DATA: &str = r#"
data "homelab_cidr_allocation" "acme" {
  name = "acme"
}
output "acme" {
  value = data.homelab_cidr_allocation.acme
}
"#;

acceptance! {
fn init_finds_provider_in_local_mirror_offline(tf: Tf) {
    let home = tempfile::tempdir().unwrap();
    let w = Workdir::new(tf, &format!("{}{DATA}", provider(home.path(), "")));
    let r = w.init();
    assert!(r.stdout.contains("Installing homelab/homelab"), "{}", r.all());
    assert!(r.stdout.contains("Terraform has been successfully initialized"), "{}", r.all());
}
}

fn walk_attributes(path: &str, block: &serde_json::Value, missing: &mut Vec<String>, count: &mut usize) {
    if let Some(attrs) = block["attributes"].as_object() {
        for (name, a) in attrs {
            *count += 1;
            let d = a["description"].as_str().unwrap_or("");
            if d.trim().is_empty() {
                missing.push(format!("{path}.{name}"));
            }
        }
    }
    if let Some(blocks) = block["block_types"].as_object() {
        for (name, b) in blocks {
            walk_attributes(&format!("{path}.{name}"), &b["block"], missing, count);
        }
    }
}

acceptance! {
fn schema_shows_provider_resources_data_source_every_attribute_described(tf: Tf) {
    let home = tempfile::tempdir().unwrap();
    let w = Workdir::new(tf, &format!("{}{DATA}", provider(home.path(), "")));
    w.init();
    let r = w.tf(&["providers", "schema", "-json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let p = &v["provider_schemas"]["registry.terraform.io/homelab/homelab"];
    assert!(p.is_object(), "provider missing from schema: {}", r.stdout);
    let mut missing = Vec::new();
    let mut count = 0;
    walk_attributes("provider", &p["provider"]["block"], &mut missing, &mut count);
    for kind in ["resource_schemas", "data_source_schemas"] {
        let m = p[kind].as_object().unwrap();
        for (name, s) in m {
            walk_attributes(name, &s["block"], &mut missing, &mut count);
        }
    }
    let resources: Vec<&String> = p["resource_schemas"].as_object().unwrap().keys().collect();
    assert_eq!(resources, vec!["homelab_federation", "homelab_instance"]);
    let data: Vec<&String> = p["data_source_schemas"].as_object().unwrap().keys().collect();
    assert_eq!(data, vec!["homelab_cidr_allocation", "homelab_reachability"]);
    assert!(count > 50, "only {count} attributes seen");
    assert!(missing.is_empty(), "attributes without description: {missing:?}");
    // Every attribute the issues name is there.
    let inst = &p["resource_schemas"]["homelab_instance"]["block"]["attributes"];
    for a in ["name", "backend", "control_planes", "workers", "subnet", "pod_cidr", "service_cidr", "id", "gateway", "nodes", "federated_with", "created_at"] {
        assert!(inst[a].is_object(), "homelab_instance.{a} missing");
    }
    assert_eq!(inst["kubeconfig"]["sensitive"], true);
    let prov = &p["provider"]["block"]["attributes"];
    for a in ["home", "host_pool", "host_prefix", "pod_pool", "pod_prefix", "service_pool", "service_prefix", "reservation_ttl", "default_backend", "netns_host", "vagrant_bin", "hypervisor", "libvirt_driver"] {
        assert!(prov[a].is_object(), "provider.{a} missing");
    }
}
}

acceptance! {
fn data_source_on_empty_home_shows_defaults_and_writes_nothing(tf: Tf) {
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("home");
    let w = Workdir::new(tf, &format!("{}{DATA}", provider(&home, "")));
    w.init();
    w.apply().ok();
    let out = w.outputs();
    let v = &out["acme"]["value"];
    assert_eq!(v["status"], "free");
    assert_eq!(v["subnet"], "192.168.56.0/24");
    assert_eq!(v["gateway"], "192.168.56.1");
    assert_eq!(v["pod_cidr"], "10.244.0.0/16");
    assert_eq!(v["service_cidr"], "10.96.0.0/16");
    assert_eq!(v["pools"]["host"]["capacity"], 8);
    assert_eq!(v["pools"]["host"]["free"], 8);
    assert_eq!(v["pools"]["pod"]["capacity"], 16);
    assert_eq!(v["pools"]["service"]["cidr"], "10.96.0.0/12");
    assert!(!home.exists(), "reading the data source created {}", home.display());
}
}

acceptance! {
fn non_canonical_pool_fails_at_plan_naming_attribute_and_fix(tf: Tf) {
    let home = tempfile::tempdir().unwrap();
    let w = Workdir::new(tf, &format!("{}{DATA}", provider(home.path(), "  pod_pool = \"10.244.0.0/12\"\n")));
    w.init();
    let r = w.tf(&["plan"]).failed();
    let all = r.all();
    assert!(all.contains("pod_pool"), "{all}");
    assert!(all.contains("10.240.0.0/12"), "{all}");
    assert!(all.contains("host bits set"), "{all}");
}
}

acceptance! {
fn overlapping_pools_and_bad_prefix_fail_at_plan(tf: Tf) {
    let home = tempfile::tempdir().unwrap();
    let w = Workdir::new(tf, &format!(
        "{}{DATA}",
        provider(home.path(), "  service_pool = \"10.240.0.0/16\"\n  host_prefix = 20\n")
    ));
    w.init();
    let r = w.tf(&["plan"]).failed();
    let all = r.all();
    assert!(all.contains("service_pool") && all.contains("overlaps pod_pool"), "{all}");
    assert!(all.contains("host_prefix"), "{all}");
}
}

acceptance! {
fn committed_docs_match_docs_generated_from_schema(tf: Tf) {
    let home = tempfile::tempdir().unwrap();
    let w = Workdir::new(tf, &format!("{}{DATA}", provider(home.path(), "")));
    w.init();
    let r = w.tf(&["providers", "schema", "-json"]).ok();
    let pages = homelab::docs::render(&r.stdout, &repo_root().join("examples")).unwrap();
    let docs = repo_root().join("docs");
    let mut stale = Vec::new();
    for (rel, body) in &pages {
        let committed = std::fs::read_to_string(docs.join(rel)).unwrap_or_default();
        if &committed != body {
            stale.push(rel.clone());
        }
    }
    let mut extra = Vec::new();
    // Terraform 1.0.3 reports no ephemeral resources (protocol 6.7): their pages are checked
    // by the newer Terraform only.
    let mut subs = vec!["", "resources", "data-sources"];
    if r.stdout.contains("\"ephemeral_resource_schemas\"") {
        subs.push("ephemeral-resources");
    }
    for sub in subs {
        if let Ok(rd) = std::fs::read_dir(docs.join(sub)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let rel = e.path().strip_prefix(&docs).unwrap().display().to_string();
                    if !pages.contains_key(&rel) {
                        extra.push(rel);
                    }
                }
            }
        }
    }
    assert!(
        stale.is_empty() && extra.is_empty(),
        "docs/ is out of date (stale: {stale:?}, not generated: {extra:?}): run scripts/gen-docs.sh and commit docs/"
    );
}
}
