//! The quickstart example (`examples/quickstart/main.tf`) through the real Terraform CLI, in a
//! lab host and home of the test's own: it applies, its check block holds on Terraform 1.5+, and
//! `terraform output -raw reachability` prints the matrix the data source measured. On
//! Terraform 1.0 (no check blocks) the example runs with its check block taken out. The
//! example's `terraform` block is left out: the test's folder declares the provider source.

use crate::acceptance;
use crate::util::netns::{namespaces_of, LabHostGuard};
use crate::util::terraform::{repo_root, Workdir};

/// The example with its provider block aimed at the test's home and lab host, and without its
/// check block when `check` is false.
fn example(home: &std::path::Path, host: &str, check: bool) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart/main.tf")).unwrap();
    let provider = "provider \"homelab\" {\n  default_backend = \"netns\"\n}\n";
    assert!(text.contains(provider), "the example's provider block changed");
    let mut text = text.replace(
        provider,
        &format!("provider \"homelab\" {{\n  default_backend = \"netns\"\n  home = \"{}\"\n  netns_host = \"{host}\"\n}}\n", home.display()),
    );
    // The test's folder declares the provider source itself.
    let start = text.find("terraform {\n").expect("the example has a terraform block");
    let end = start + text[start..].find("\n}\n").unwrap() + 3;
    text.replace_range(start..end, "");
    if !check {
        assert!(text.contains("check \"isolation\" {"), "the example has a check block");
        text = crate::util::terraform::without_check_blocks(&text);
        assert!(!text.contains("check \""), "{text}");
    }
    text
}

acceptance! {
fn quickstart_example_applies_holds_its_check_and_prints_its_matrix_through_terraform_output(tf: Tf) {
    let home = tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap();
    let host = LabHostGuard::new();
    let check = tf.at_least(1, 5);
    let w = Workdir::new(tf, &example(home.path(), &host.name, check));
    w.init();
    w.apply().ok();
    let out = w.tf(&["output", "-raw", "reachability"]).ok().stdout;
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Reachability (homelab_reachability"), "{out}");
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), vec!["from", "acme", "globex", "initech"], "{out}");
    // 12 sources: each answers on its own 3 other guests, and on none of the 6 addresses of
    // each other instance.
    let rows: Vec<Vec<&str>> = lines[3..15].iter().map(|l| l.split_whitespace().collect()).collect();
    for row in &rows {
        let own = ["acme", "globex", "initech"].iter().position(|n| row[0].starts_with(&format!("{n}-"))).unwrap();
        for (i, cell) in row[1..].iter().enumerate() {
            assert_eq!(*cell, if i == own { "3/3" } else { "0/6" }, "{out}");
        }
    }
    assert!(lines[16].contains("nothing of another instance answers (144 probes: no route)"), "{out}");
    if check {
        let r = w.tf(&["plan", "-no-color"]).ok();
        assert!(!r.all().contains("Check block assertion failed"), "{}", r.all());
    }
    w.destroy().ok();
    assert!(namespaces_of(&host.name).is_empty(), "{:?}", namespaces_of(&host.name));
}
}
