//! `homelab_instance` and `homelab_federation` on REAL VMs through the real Terraform CLI:
//! `backend = "vagrant"`, `hypervisor = "libvirt"`, `libvirt_driver = "qemu"`, the locally built
//! box, `provision = false`, one node each. Terraform, the provider, vagrant, libvirtd and the
//! VMs all live inside a network namespace (and private mount namespace) of the test's own
//! (`VmLab`); the root namespace is never touched. Each step is an acceptance step; every
//! command has a hard timeout and the lab is torn down on any failure.
//!
//! Both Terraforms drive the same VMs (booting them takes most of the test's time): 1.0.3
//! creates, plans and scales them; the newest Terraform on the machine then plans
//! (`-refresh-only -detailed-exitcode` included), federates, repairs and destroys them (its
//! state format is newer, so 1.0.3 cannot follow it back). Each step says which one ran.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use homelab::registry::file::FileStore;
use homelab::registry::Store;

use crate::util::terraform::{cli_config, Run, Tf, Workdir};
use crate::util::vm::{step, VmLab, TEST_BOX};

/// The budget for the VM test once the box is built.
const BUDGET: Duration = Duration::from_secs(600);

fn config(lab: &VmLab, acme_workers: u32, federated: bool) -> String {
    let inst = |name: &str, workers: u32| {
        format!(
            "resource \"homelab_instance\" \"{name}\" {{\n  name = \"{name}\"\n  box = \"{TEST_BOX}\"\n  provision = false\n  cpus = 1\n  memory_mb = 384\n  workers = {workers}\n  timeouts {{\n    create = \"8m\"\n    update = \"8m\"\n    delete = \"4m\"\n  }}\n}}\n"
        )
    };
    let mut c = format!(
        "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"vagrant\"\n  hypervisor = \"libvirt\"\n  libvirt_driver = \"qemu\"\n}}\n{}{}",
        lab.home.display(),
        inst("acme", acme_workers),
        inst("globex", 0)
    );
    if federated {
        c.push_str("resource \"homelab_federation\" \"acme_globex\" {\n  instances = [homelab_instance.acme.name, homelab_instance.globex.name]\n  reason = \"VM federation test\"\n}\n");
    }
    c
}

/// Run terraform `which` inside the lab with a hard timeout.
fn tf(which: Tf, lab: &VmLab, w: &Workdir, args: &[&str], timeout: Duration) -> Run {
    let chdir = format!("-chdir={}", w.path().display());
    let cfg = format!("TF_CLI_CONFIG_FILE={}", cli_config().display());
    let bin = which.bin();
    let mut argv: Vec<&str> = vec!["env", &cfg, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", bin.to_str().unwrap(), &chdir];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-input=false", "-no-color"]);
    let out = lab.run(&argv, timeout);
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn instance_dir(lab: &VmLab, name: &str) -> PathBuf {
    lab.home.join("instances").join(name)
}

/// Ping each target from `machine` (three tries of 3 s, as root): which answered.
fn reached(lab: &VmLab, dir: &Path, machine: &str, targets: &[String]) -> Vec<(String, bool)> {
    let script: String = targets
        .iter()
        .map(|ip| format!("if sudo ping -n -c 3 -W 3 {ip} >/dev/null 2>&1; then echo '{ip} ok'; else echo '{ip} no'; fi; "))
        .collect();
    let out = lab.ssh(dir, machine, &script);
    targets
        .iter()
        .map(|ip| (ip.clone(), out.lines().any(|l| l.trim() == format!("{ip} ok"))))
        .collect()
}

#[test]
fn terraform_1_0_3_then_newest_on_real_vms_isolated_scaled_federated_and_destroyed() {
    let (old, new) = (Tf::Oldest, Tf::Newest);
    old.announce();
    new.announce();
    let lab = VmLab::start();
    let t0 = Instant::now();
    let mut w = Workdir::new(old, &config(&lab, 0, false));
    w.init();
    let long = Duration::from_secs(540);

    // Step 1 (create + read): acme and globex, one VM each, in parallel.
    step(t0, BUDGET, "terraform 1.0.3 apply: acme and globex");
    tf(old, &lab, &w, &["apply", "-auto-approve"], long).ok();
    let state = |w: &Workdir, n: &str| w.resource(&format!("homelab_instance.{n}")).unwrap();
    let (acme, globex) = (state(&w, "acme"), state(&w, "globex"));
    for s in [&acme, &globex] {
        assert_eq!(s["state"], "running", "{s}");
        assert!(s["mgmt_cidr"].is_string(), "{s}");
    }
    assert_ne!(acme["mgmt_cidr"], globex["mgmt_cidr"]);
    let mut nets = lab.networks();
    nets.sort();
    assert_eq!(nets, ["homelab-acme", "homelab-acme-mgmt", "homelab-globex", "homelab-globex-mgmt"]);
    for n in &nets {
        assert!(!lab.virsh(&["net-dumpxml", n]).contains("<forward"), "{n} is not isolated");
    }
    let r = tf(old, &lab, &w, &["plan", "-detailed-exitcode"], long);
    assert_eq!(r.code, 0, "second plan not empty:\n{}", r.all());
    let r = tf(old, &lab, &w, &["plan", "-refresh-only", "-detailed-exitcode"], long);
    assert_eq!(r.code, 0, "refresh-only plan after the apply reports drift:\n{}", r.all());
    // The newest Terraform reads the same state: no change. (Its refresh-only plan of a state
    // that 1.0.3 wrote shows the sensitive mark that 1.0.3 did not record for the null
    // kubeconfig, until the first apply; it is checked after the newest's own apply below.)
    step(t0, BUDGET, &format!("terraform {} plan", new.version()));
    let state_by_old = (state(&w, "acme"), state(&w, "globex"));
    w.tf = new;
    w.init();
    let r = tf(new, &lab, &w, &["plan", "-detailed-exitcode"], long);
    assert_eq!(r.code, 0, "terraform {}: plan not empty:\n{}", new.version(), r.all());
    assert_eq!((state(&w, "acme"), state(&w, "globex")), state_by_old, "the newest Terraform reads another state");
    // Each VM's serial console is logged beside its Vagrantfile (shown when a boot fails):
    // the box runs a getty there once booted.
    for (n, node) in [("acme", "acme-cp-1"), ("globex", "globex-cp-1")] {
        let log = instance_dir(&lab, n).join(format!("console/{node}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        assert!(text.contains(" login:"), "{}:\n{text}", log.display());
    }

    // Step 2 (isolation audit): from acme's VM, nothing of globex answers on any interface
    // pair (host-only and management); its own gateway does (so the ping itself works).
    step(t0, BUDGET, "isolation audit");
    let (acme_dir, globex_dir) = (instance_dir(&lab, "acme"), instance_dir(&lab, "globex"));
    let (a_addrs, a_routes) = lab.addresses_and_routes(&acme_dir, "acme-cp-1");
    let (g_addrs, _) = lab.addresses_and_routes(&globex_dir, "globex-cp-1");
    assert!(!a_routes.contains("default"), "acme-cp-1 has a default route:\n{a_routes}");
    assert_eq!(a_addrs.len(), 2, "{a_addrs:?}");
    assert_eq!(g_addrs.len(), 2, "{g_addrs:?}");
    let globex_ips: Vec<String> = g_addrs.values().cloned().collect();
    let own_gw = acme["gateway"].as_str().unwrap().to_string();
    let mut targets = globex_ips.clone();
    targets.push(own_gw.clone());
    for (ip, ok) in reached(&lab, &acme_dir, "acme-cp-1", &targets) {
        if ip == own_gw {
            assert!(ok, "acme-cp-1 cannot reach its own gateway {ip}");
        } else {
            assert!(!ok, "acme-cp-1 reached globex at {ip}");
        }
    }
    let cp_uuid = lab.virsh(&["domuuid", "homelab-acme-cp-1"]);

    // Step 3 (update in place): acme 0 -> 1 worker; cp-1 is the same domain afterwards.
    step(t0, BUDGET, "terraform 1.0.3: workers 0 -> 1");
    w.write(&config(&lab, 1, false));
    let r = tf(old, &lab, &w, &["plan"], long).ok();
    assert!(r.stdout.contains("updated in-place") && !r.stdout.contains("must be replaced"), "{}", r.stdout);
    tf(old, &lab, &w, &["apply", "-auto-approve"], long).ok();
    assert!(lab.domains().contains(&"homelab-acme-worker-1".to_string()), "{:?}", lab.domains());
    assert_eq!(lab.virsh(&["domuuid", "homelab-acme-cp-1"]), cp_uuid, "acme-cp-1 was re-created");

    // Step 4 (federate): the host-only addresses of the pair reach each other; management
    // networks stay apart.
    step(t0, BUDGET, &format!("terraform {}: federate acme + globex", new.version()));
    w.write(&config(&lab, 1, true));
    let r = tf(new, &lab, &w, &["apply", "-auto-approve"], long).ok();
    assert!(r.all().contains("Federation acme+globex opens a path"), "{}", r.all());
    let r = tf(new, &lab, &w, &["plan", "-refresh-only", "-detailed-exitcode"], long);
    assert_eq!(r.code, 0, "terraform {}: refresh-only plan after its apply reports drift:\n{}", new.version(), r.all());
    let globex_hostonly = globex["nodes"][0]["ip"].as_str().unwrap().to_string();
    let globex_mgmt: Vec<String> = globex_ips.iter().filter(|ip| **ip != globex_hostonly).cloned().collect();
    let res = reached(&lab, &acme_dir, "acme-cp-1", &[vec![globex_hostonly.clone()], globex_mgmt.clone()].concat());
    for (ip, ok) in res {
        if ip == globex_hostonly {
            assert!(ok, "federated: acme-cp-1 cannot reach globex-cp-1 at {ip}");
        } else {
            assert!(!ok, "federation opened the management networks ({ip})");
        }
    }

    // Step 5 (unfederate): the pair is unreachable again.
    step(t0, BUDGET, "destroy the federation");
    w.write(&config(&lab, 1, false));
    tf(new, &lab, &w, &["apply", "-auto-approve"], long).ok();
    let res = reached(&lab, &acme_dir, "acme-cp-1", std::slice::from_ref(&globex_hostonly));
    assert!(!res[0].1, "after the federation: acme-cp-1 still reaches globex");

    // Step 6 (read drift): globex's VM powered off behind Vagrant's back: the plan shows it
    // and the repair (not applied: the destroy below also handles a halted VM).
    step(t0, BUDGET, "power off globex-cp-1 out of band");
    lab.virsh(&["destroy", "homelab-globex-cp-1"]);
    let r = tf(new, &lab, &w, &["plan", "-detailed-exitcode"], long);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("\"shutoff\" -> \"running\""), "{}", r.stdout);

    // Step 7 (update in place): acme 1 -> 0 workers; the worker goes, cp-1 stays.
    step(t0, BUDGET, "workers 1 -> 0");
    w.write(&config(&lab, 0, false));
    tf(new, &lab, &w, &["apply", "-auto-approve", "-target=homelab_instance.acme"], long).ok();
    assert!(!lab.domains().contains(&"homelab-acme-worker-1".to_string()), "{:?}", lab.domains());
    assert_eq!(lab.virsh(&["domuuid", "homelab-acme-cp-1"]), cp_uuid, "acme-cp-1 was re-created");

    // Step 8 (destroy): no domain, no libvirt network, no volume, no registry entry.
    step(t0, BUDGET, "terraform destroy");
    tf(new, &lab, &w, &["destroy", "-auto-approve"], long).ok();
    assert!(lab.domains().is_empty(), "{:?}", lab.domains());
    assert!(lab.networks().is_empty(), "{:?}", lab.networks());
    assert!(lab.instance_volumes().is_empty(), "{:?}", lab.volumes());
    assert!(FileStore::new(&lab.home).load().unwrap().instances.is_empty());
    FileStore::new(&lab.home).verify_events().unwrap();
    step(t0, BUDGET, "done");
}
