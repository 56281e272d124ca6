//! `homelab_instance` with `backend = "vagrant"` through the real Terraform CLI, against the
//! FAKE `vagrant` stand-in (tests/fixtures/vagrant/fake-vagrant: no VM can run for VirtualBox
//! here). What it checks is the provider's side: plan-time rules, the Vagrantfile, drift read
//! from `vagrant status`, in-place scaling, the create timeout and Ctrl-C (Terraform's
//! StopProvider) stopping the whole vagrant process group. The real-VM version of the lifecycle
//! is `acceptance_vagrant`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use homelab::registry::file::FileStore;
use homelab::registry::Store;

use crate::acceptance;
use crate::util::terraform::{Tf, Workdir};
use crate::util::vagrant::fake_vagrant;

struct FakeLab {
    home: tempfile::TempDir,
    pids: PathBuf,
    tf: Tf,
    /// `provision` of the instance (false unless a test sets it).
    provision: bool,
}

impl FakeLab {
    fn new(tf: Tf) -> FakeLab {
        let home = tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap();
        let pids = home.path().join("fake-pids");
        FakeLab { home, pids, tf, provision: false }
    }

    fn config(&self, instance_body: &str) -> String {
        format!(
            "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"vagrant\"\n  vagrant_bin = \"{}\"\n}}\nresource \"homelab_instance\" \"acme\" {{\n  name = \"acme\"\n  provision = {}\n{instance_body}}}\n",
            self.home.path().display(),
            fake_vagrant().display(),
            self.provision
        )
    }

    fn workdir(&self, instance_body: &str, env: &[(&str, &str)]) -> Workdir {
        let mut w = Workdir::new(self.tf, &self.config(instance_body));
        w.env.push(("FAKE_VAGRANT_PIDS".into(), self.pids.display().to_string()));
        // A FAKE VBoxManage answers the provider's VirtualBox preflight.
        let fake_bin = crate::util::terraform::repo_root().join("tests/fixtures/vagrant/fake-bin");
        let path = format!("{}:{}", fake_bin.display(), std::env::var("PATH").unwrap_or_default());
        w.env.push(("PATH".into(), path));
        for (k, v) in env {
            w.env.push((k.to_string(), v.to_string()));
        }
        w.init();
        w
    }

    fn dir(&self) -> PathBuf {
        self.home.path().join("instances/acme")
    }

    fn set_state(&self, machine: &str, state: &str) {
        let p = self.dir().join(".fake-states");
        let mut lines: Vec<String> = std::fs::read_to_string(&p)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with(&format!("{machine} ")))
            .map(String::from)
            .collect();
        lines.push(format!("{machine} {state}"));
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    }

    /// The grandchildren the hanging fake started.
    fn hung(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

acceptance! {
fn fake_vagrant_instance_lifecycle_drift_and_scaling_through_terraform(tf: Tf) {
    let lab = FakeLab::new(tf);
    let w = lab.workdir("  workers = 1\n", &[]);
    // Create: the plan shows the networks and the generated paths.
    let plan = w.tf(&["plan"]).ok();
    assert!(
        plan.stdout.lines().any(|l| l.trim_start().starts_with("+ subnet ") && l.ends_with("= \"192.168.56.0/24\"")),
        "{}",
        plan.stdout
    );
    w.apply().ok();
    let s = w.resource("homelab_instance.acme").unwrap();
    assert_eq!(s["state"], "running");
    assert_eq!(s["box"], "bento/ubuntu-24.04");
    assert_eq!(s["kubeconfig"], serde_json::Value::Null);
    let vagrantfile = std::fs::read_to_string(lab.dir().join("Vagrantfile")).unwrap();
    assert!(vagrantfile.contains("config.vm.define \"acme-cp-1\""), "{vagrantfile}");
    assert!(vagrantfile.contains("192.168.56.20"), "{vagrantfile}");
    assert!(vagrantfile.to_lowercase().contains("generated"), "{vagrantfile}");
    assert_eq!(w.plan_exit().code, 0);
    // A halted VM: state shows it, the next apply brings it up.
    lab.set_state("acme-cp-1", "shutoff");
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("shutoff") && r.stdout.contains("\"running\""), "{}", r.stdout);
    w.apply().ok();
    assert_eq!(w.plan_exit().code, 0);
    // Workers 1 -> 2: in place.
    w.write(&lab.config("  workers = 2\n"));
    let r = w.tf(&["plan"]).ok();
    assert!(r.stdout.contains("updated in-place") && !r.stdout.contains("must be replaced"), "{}", r.stdout);
    w.apply().ok();
    let vagrantfile = std::fs::read_to_string(lab.dir().join("Vagrantfile")).unwrap();
    assert!(vagrantfile.contains("config.vm.define \"acme-worker-2\""), "{vagrantfile}");
    // No machine left at all: the plan re-creates.
    for m in ["acme-cp-1", "acme-worker-1", "acme-worker-2"] {
        lab.set_state(m, "not_created");
    }
    let r = w.plan_exit();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("will be created"), "{}", r.stdout);
    w.apply().ok();
    // Destroy: folder and registry entry gone.
    w.destroy().ok();
    assert!(!lab.dir().exists(), "the instance folder is left");
    assert!(FileStore::new(lab.home.path()).load().unwrap().instances.is_empty());
}
}

acceptance! {
fn vagrant_only_settings_and_virtualbox_range_are_checked_at_plan(tf: Tf) {
    let lab = FakeLab::new(tf);
    let w = lab.workdir("  backend = \"netns\"\n  workers = 0\n", &[]);
    let r = w.tf(&["plan"]).failed();
    assert!(r.all().contains("`provision` is only for the vagrant backend"), "{}", r.all());
    w.write(&lab.config("  workers = 0\n  subnet = \"10.50.0.0/24\"\n"));
    let r = w.tf(&["plan"]).failed();
    assert!(r.all().contains("VirtualBox") && r.all().contains("192.168.56.0/21") && r.all().contains("networks.conf"), "{}", r.all());
    assert!(!lab.home.path().join("instances.json").exists(), "refused plans wrote the registry");
}
}

acceptance! {
fn create_timeout_stops_the_vagrant_process_group_and_destroy_cleans_up(tf: Tf) {
    let lab = FakeLab::new(tf);
    let w = lab.workdir("  workers = 0\n  timeouts {\n    create = \"4s\"\n  }\n", &[("FAKE_VAGRANT_MODE", "hang")]);
    let t = Instant::now();
    let r = w.apply().failed();
    assert!(t.elapsed() < Duration::from_secs(60), "the timeout was not enforced");
    assert!(r.all().contains("timed out after 4s") && r.all().contains("vagrant up"), "{}", r.all());
    let hung = lab.hung();
    assert!(!hung.is_empty(), "the fake did not start");
    for pid in hung {
        assert!(!alive(pid), "vagrant's grandchild {pid} survived the timeout");
    }
    // What exists is in state (tainted), so destroy cleans up.
    assert!(w.resource("homelab_instance.acme").is_some());
    let mut clean = w;
    clean.env.retain(|(k, _)| k != "FAKE_VAGRANT_MODE");
    clean.destroy().ok();
    assert!(FileStore::new(lab.home.path()).load().unwrap().instances.is_empty());
}
}

acceptance! {
fn ctrl_c_during_create_stops_the_vagrant_process_group_through_stop_provider(tf: Tf) {
    let lab = FakeLab::new(tf);
    let w = lab.workdir("  workers = 0\n", &[("FAKE_VAGRANT_MODE", "hang")]);
    // Terraform and the provider in a process group of their own, as in a terminal: Ctrl-C
    // sends SIGINT to the whole group. Vagrant runs in a group of its own, as the provider
    // starts it; it is stopped because Terraform sends StopProvider, not by the SIGINT.
    let mut child = std::process::Command::new(tf.bin());
    child
        .args(["apply", "-auto-approve", "-input=false", "-no-color"])
        .current_dir(w.path())
        .env("TF_CLI_CONFIG_FILE", crate::util::terraform::cli_config())
        .env("CHECKPOINT_DISABLE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in &w.env {
        child.env(k, v);
    }
    std::os::unix::process::CommandExt::process_group(&mut child, 0);
    let child = child.spawn().unwrap();
    let pgid = child.id() as i32;
    let t = Instant::now();
    while lab.hung().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "vagrant up never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(-pgid, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("Interrupt received") || all.contains("interrupted"), "{all}");
    assert!(all.contains("interrupted by Terraform while running") && all.contains("vagrant up"), "{all}");
    for pid in lab.hung() {
        assert!(!alive(pid), "vagrant's grandchild {pid} survived Ctrl-C");
    }
    let mut clean = w;
    clean.env.retain(|(k, _)| k != "FAKE_VAGRANT_MODE");
    clean.destroy().ok();
    assert!(FileStore::new(lab.home.path()).load().unwrap().instances.is_empty());
}
}

acceptance! {
/// The provider SIGKILLed while `vagrant up` has one node up and the next mid-boot: the killed
/// run's `vagrant up` is left running (holding Vagrant's machine locks, as a real one would),
/// and the registry shows the creation interrupted. The next apply stops that leftover, rebuilds
/// the machines it was bringing up, adopts the instance (an event says so) and converges; the
/// plan after it is empty, and destroy leaves nothing.
fn fake_vagrant_provider_killed_during_vagrant_up_the_next_apply_adopts(tf: Tf) {
    use crate::acceptance_interrupted::{kill, providers_of, Running};
    let lab = FakeLab::new(tf);
    let log = lab.home.path().join("fake-vagrant.log");
    let log_env = log.display().to_string();
    let w = lab.workdir(
        "  workers = 1\n",
        &[("FAKE_VAGRANT_MODE", "hang-after-first"), ("FAKE_VAGRANT_LOCKS", "1"), ("FAKE_VAGRANT_LOG", &log_env)],
    );
    let (mut cmd, _) = w.command(&["apply", "-auto-approve"]);
    let mut child = Running(cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap());
    let t = Instant::now();
    while lab.hung().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "vagrant up never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let providers = providers_of(child.id());
    assert!(!providers.is_empty(), "no provider under terraform {}", child.id());
    for (p, _) in &providers {
        kill(*p);
    }
    child.0.wait().unwrap();
    let leftovers = lab.hung();
    assert!(leftovers.iter().all(|p| alive(*p)), "the killed run's vagrant up should still run: {leftovers:?}");
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(["registry", "list", "--home", &lab.home.path().display().to_string()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("acme") && listed.contains("interrupted"), "{listed}");

    let mut next = w;
    next.env.retain(|(k, _)| k != "FAKE_VAGRANT_MODE");
    let r = next.apply();
    assert_eq!(r.code, 0, "the apply after the kill failed:\n{}", r.all());
    for p in &leftovers {
        assert!(!alive(*p), "the leftover vagrant process {p} still runs");
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.contains("destroy -f acme-cp-1 acme-worker-1"), "the half-made machines were not rebuilt:\n{calls}");
    let actions: Vec<String> = FileStore::new(lab.home.path()).events().unwrap().into_iter().map(|e| e.action).collect();
    assert!(actions.iter().any(|a| a == "instance.adopt"), "{actions:?}");
    assert_eq!(next.resource("homelab_instance.acme").unwrap()["state"], "running");
    assert_eq!(next.plan_exit().code, 0, "the plan after the adopting apply is not empty");
    next.destroy().ok();
    assert!(!lab.dir().exists(), "the instance folder is left");
    assert!(FileStore::new(lab.home.path()).load().unwrap().instances.is_empty());
}
}

/// `n` random lowercase hex digits (a secret-shaped value no file holds by chance).
fn random_hex(n: usize) -> String {
    let mut out = String::new();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() ^ u128::from(std::process::id());
    while out.len() < n {
        // xorshift
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.push_str(&format!("{:x}", seed & 0xffff_ffff));
    }
    out.truncate(n);
    out
}

/// Every file under `dir` that others may read (mode not 0600), with its text.
fn readable_files(dir: &std::path::Path) -> Vec<(PathBuf, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            out.extend(readable_files(&p));
        } else if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            out.push((p.clone(), String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned()));
        }
    }
    out
}

acceptance! {
/// No secret of a cluster (bootstrap token, certificate key, the admin kubeconfig's client key)
/// reaches Terraform's log at TRACE (the provider's lines included), a diagnostic, the events
/// log, the state outside the sensitive `kubeconfig`, or a file of the instance folder others
/// may read: through a create with two control planes (token and certificate key), a scale-up
/// that joins a node, a join that fails (its command line is shown, redacted), and destroy. The
/// FAKE `vagrant` prints the secrets where real kubeadm does.
fn fake_vagrant_secrets_never_reach_logs_diagnostics_events_or_state(tf: Tf) {
    let mut lab = FakeLab::new(tf);
    lab.provision = true;
    let token = format!("{}.{}", random_hex(6), random_hex(16));
    let cert_key = random_hex(64);
    let client_key = random_hex(48);
    let log = lab.home.path().join("fake-vagrant.log");
    let log_env = log.display().to_string();
    let env = [
        ("FAKE_VAGRANT_TOKEN", token.as_str()),
        ("FAKE_VAGRANT_CERT_KEY", cert_key.as_str()),
        ("FAKE_VAGRANT_CLIENT_KEY", client_key.as_str()),
        ("FAKE_VAGRANT_LOG", log_env.as_str()),
        ("TF_LOG", "TRACE"),
    ];
    let body = |workers: u32| format!("  control_planes = 2\n  workers = {workers}\n");
    let mut w = lab.workdir(&body(1), &env);
    let mut seen = String::new();
    let mut record = |r: &crate::util::terraform::Run| {
        seen.push_str(&r.stdout);
        seen.push_str(&r.stderr);
    };
    let r = w.apply().ok();
    record(&r);
    w.write(&lab.config(&body(2)));
    let r = w.apply().ok();
    record(&r);
    w.env.push(("FAKE_VAGRANT_JOIN_FAIL".into(), "1".into()));
    w.write(&lab.config(&body(3)));
    let r = w.apply().failed();
    record(&r);
    assert!(r.all().contains("kubeadm join") && r.all().contains(homelab::process::REDACTED), "the failed join is not shown, redacted:\n{}", r.all());
    // The secrets were really used: the stand-in saw them.
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.contains(&token) && calls.contains(&cert_key), "the join never used the secrets:\n{calls}");
    // The state: only the sensitive kubeconfig holds the client key.
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(w.path().join("terraform.tfstate")).unwrap()).unwrap();
    let mut stripped = state.clone();
    let mut kubeconfigs = String::new();
    for res in stripped["resources"].as_array_mut().unwrap() {
        for inst in res["instances"].as_array_mut().unwrap() {
            if let Some(k) = inst["attributes"].as_object_mut().and_then(|a| a.remove("kubeconfig")) {
                kubeconfigs.push_str(&k.to_string());
            }
        }
    }
    assert!(kubeconfigs.contains(&client_key), "the kubeconfig attribute lacks the client key: {kubeconfigs}");
    let files = readable_files(&lab.dir());
    assert!(!files.is_empty(), "no instance files read");
    let events = std::fs::read_to_string(lab.home.path().join("events.jsonl")).unwrap();
    let r = {
        let mut clean = w;
        clean.env.retain(|(k, _)| k != "FAKE_VAGRANT_JOIN_FAIL");
        clean.destroy().ok()
    };
    record(&r);
    assert!(seen.contains("provider.terraform-provider-homelab") || seen.contains("terraform-provider-homelab"), "no provider log lines at TRACE");
    let places: Vec<(String, String)> = [("terraform output and TRACE log".to_string(), seen), ("events.jsonl".into(), events), ("state without kubeconfig".into(), stripped.to_string())]
        .into_iter()
        // The stand-in's own records (`.fake-*`) stand for what the guests hold.
        .chain(files.into_iter().filter(|(p, _)| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".fake-"))).map(|(p, t)| (p.display().to_string(), t)))
        .collect();
    let secret_half = token.split_once('.').unwrap().1.to_string();
    for (what, text) in &places {
        for (name, secret) in [("bootstrap token", &secret_half), ("certificate key", &cert_key), ("client key", &client_key)] {
            if let Some(at) = text.find(secret.as_str()) {
                let from = text[..at].char_indices().rev().nth(200).map(|(i, _)| i).unwrap_or(0);
                panic!("the {name} appears in {what}: …{}…", &text[from..(at + secret.len()).min(text.len())]);
            }
        }
    }
}
}

/// The test-only `echo` provider (tests/fixtures/echo-provider), built when missing.
fn echo_provider() -> PathBuf {
    let root = crate::util::terraform::repo_root();
    let bin = root.join("target/debug/examples/test-echo-provider");
    if !bin.is_file() {
        let st = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "test-echo-provider"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(st.success(), "cannot build the echo provider");
    }
    bin
}

/// A filesystem mirror holding the provider under test and the `echo` provider, and the CLI
/// configuration that uses it.
fn mirror_with_echo(dir: &std::path::Path) -> PathBuf {
    let version = env!("CARGO_PKG_VERSION");
    for (name, bin) in [("homelab", PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-homelab"))), ("echo", echo_provider())] {
        let v = if name == "echo" { "0.0.1" } else { version };
        let plat = dir.join(format!("registry.terraform.io/homelab/{name}/{v}/linux_amd64"));
        std::fs::create_dir_all(&plat).unwrap();
        std::os::unix::fs::symlink(bin, plat.join(format!("terraform-provider-{name}_v{v}"))).unwrap();
    }
    let rc = dir.join("terraformrc");
    std::fs::write(
        &rc,
        format!("provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n    include = [\"registry.terraform.io/homelab/*\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/homelab/*\"]\n  }}\n}}\n", dir.display()),
    )
    .unwrap();
    rc
}

acceptance! {
/// `ephemeral "homelab_kubeconfig"` hands an instance's credentials to another provider's
/// configuration (the test's own `echo` provider, which records what it received), and with
/// `kubeconfig_in_state = false` neither the state nor the saved plan holds any part of them
/// (Terraform 1.10+). On
/// Terraform 1.0.3 the provider's schema is what it always was: the ephemeral resource is
/// invisible there and everything else works as before.
fn fake_vagrant_ephemeral_kubeconfig_reaches_another_provider_and_never_the_state_or_plan(tf: Tf) {
    use base64::Engine;
    let mut lab = FakeLab::new(tf);
    lab.provision = true;
    let inner = random_hex(40);
    let key_pem = format!("-----BEGIN EC PRIVATE KEY-----\n{inner}\n-----END EC PRIVATE KEY-----\n");
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(&key_pem);
    let mirror = tempfile::Builder::new().prefix("homelab-mirror-echo-").tempdir().unwrap();
    let rc = mirror_with_echo(mirror.path());
    let received = lab.home.path().join("echo-received");
    let env = [
        ("FAKE_VAGRANT_CLIENT_KEY", key_b64.as_str()),
        ("TF_CLI_CONFIG_FILE", rc.to_str().unwrap()),
        ("ECHO_PROVIDER_RECEIVED", received.to_str().unwrap()),
    ];
    // The instance keeps its kubeconfig out of the state; the ephemeral resource hands it out.
    let body = "  workers = 0\n  kubeconfig_in_state = false\n";
    let w = lab.workdir(body, &env);
    w.apply().ok();
    let kubeconfig = std::fs::read_to_string(lab.dir().join("kubeconfig")).unwrap();
    assert!(kubeconfig.contains(&key_b64), "the instance's kubeconfig lacks the client key");
    let inst = w.resource("homelab_instance.acme").unwrap();
    assert_eq!(inst["kubeconfig"], serde_json::Value::Null, "kubeconfig_in_state = false, yet the state has it");
    assert!(inst["kubeconfig_path"].as_str().is_some_and(|p| p.ends_with("/kubeconfig")), "{inst}");
    if tf == Tf::Oldest {
        let schema: serde_json::Value = serde_json::from_str(&w.tf(&["providers", "schema", "-json"]).ok().stdout).unwrap();
        let p = &schema["provider_schemas"]["registry.terraform.io/homelab/homelab"];
        assert!(p["resource_schemas"]["homelab_instance"].is_object() && p["data_source_schemas"]["homelab_cidr_allocation"].is_object(), "{p}");
        assert!(p.get("ephemeral_resource_schemas").is_none(), "{p}");
        w.destroy().ok();
        return;
    }
    let extra = "ephemeral \"homelab_kubeconfig\" \"acme\" {\n  instance = homelab_instance.acme.name\n}\nprovider \"echo\" {\n  value = ephemeral.homelab_kubeconfig.acme.client_key\n}\ndata \"echo_probe\" \"p\" {}\n";
    // Both providers in one required_providers block (main.tf written whole).
    let required = "terraform {\n  required_providers {\n    homelab = {\n      source = \"homelab/homelab\"\n    }\n    echo = {\n      source = \"homelab/echo\"\n    }\n  }\n}\n";
    std::fs::write(w.path().join("main.tf"), format!("{required}{}{extra}", lab.config(body))).unwrap();
    w.init();
    let plan = w.tf(&["plan", "-out=tfplan"]).ok();
    let r = w.tf(&["apply", "tfplan"]).ok();
    let said = std::fs::read_to_string(&received).unwrap_or_default();
    let escaped = key_pem.replace('\n', "\\n");
    assert!(said.lines().any(|l| l == escaped), "the echo provider did not receive the key: {said:?}");
    let shown = w.tf(&["show", "-json", "tfplan"]).ok().stdout;
    let state = std::fs::read_to_string(w.path().join("terraform.tfstate")).unwrap();
    let plan_file = String::from_utf8_lossy(&std::fs::read(w.path().join("tfplan")).unwrap()).into_owned();
    for (what, text) in [("the plan output", plan.all()), ("the apply output", r.all()), ("the saved plan (show -json)", shown), ("the saved plan file", plan_file), ("the state", state)] {
        for secret in [&inner, &key_b64] {
            assert!(!text.contains(secret.as_str()), "a part of the client key is in {what}");
        }
    }
    // Back into the state: in place, and the content is there after apply.
    let clean = w;
    clean.write(&lab.config("  workers = 0\n"));
    let r = clean.tf(&["plan"]).ok();
    assert!(r.all().contains("updated in-place") && !r.all().contains("must be replaced"), "{}", r.all());
    clean.apply().ok();
    let inst = clean.resource("homelab_instance.acme").unwrap();
    assert!(inst["kubeconfig"].as_str().is_some_and(|k| k.contains(&key_b64)), "the kubeconfig did not come back into the state");
    assert_eq!(clean.plan_exit().code, 0, "not converged");
    clean.destroy().ok();
}
}

acceptance! {
fn fake_vagrant_mirror_settings_reach_the_provisioning_scripts_and_change_in_place(tf: Tf) {
    let mut lab = FakeLab::new(tf);
    lab.provision = true;
    let body = |mirror: &str, cilium: &str| {
        format!(
            "  workers = 0\n  cilium_version = \"{cilium}\"\n  kubernetes_package_mirror = \"http://mirror.lab/k8s/core:/stable:\"\n  apt_proxy = \"http://mirror.lab:3142\"\n  image_registry_mirror = \"{mirror}\"\n  cilium_cli_mirror = \"http://mirror.lab/cilium-cli\"\n"
        )
    };
    // A registry mirror without a scheme is refused at plan, naming the attribute.
    let w = lab.workdir(&body("registry.lab:5000", "1.16.9"), &[]);
    let r = w.tf(&["plan"]).failed();
    assert!(r.flat().contains("image_registry_mirror") && r.flat().contains("not an http:// or https:// URL"), "{}", r.all());
    assert!(!lab.home.path().join("instances.json").exists(), "a refused plan wrote the registry");
    // Every option reaches the scripts the guests run.
    w.write(&lab.config(&body("https://registry.lab:5000", "1.16.9")));
    w.apply().ok();
    let script = |name: &str| std::fs::read_to_string(lab.dir().join("scripts").join(name)).unwrap();
    let node = script("node.sh");
    for line in ["K8S_PACKAGES='http://mirror.lab/k8s/core:/stable:'", "APT_PROXY='http://mirror.lab:3142'", "IMAGE_MIRROR='https://registry.lab:5000'"] {
        assert!(node.contains(line), "{line} not in node.sh:\n{node}");
    }
    let cp = script("control-plane.sh");
    assert!(cp.contains("CILIUM_VERSION='1.16.9'") && cp.contains("CILIUM_CLI='http://mirror.lab/cilium-cli'"), "{cp}");
    let s = w.resource("homelab_instance.acme").unwrap();
    assert_eq!(s["cilium_version"], "1.16.9");
    assert_eq!(s["image_registry_mirror"], "https://registry.lab:5000");
    assert_eq!(w.plan_exit().code, 0);
    // A mirror moves: in place, and the scripts follow.
    w.write(&lab.config(&body("https://cache.lab", "1.16.9")));
    let r = w.tf(&["plan"]).ok();
    assert!(r.stdout.contains("updated in-place") && !r.stdout.contains("must be replaced"), "{}", r.stdout);
    w.apply().ok();
    assert!(script("node.sh").contains("IMAGE_MIRROR='https://cache.lab'"));
    assert_eq!(w.plan_exit().code, 0);
    // Import brings every option back from the registry: the plan after it is empty.
    w.tf(&["state", "rm", "homelab_instance.acme"]).ok();
    w.tf(&["import", "homelab_instance.acme", "acme"]).ok();
    let r = w.plan_exit();
    assert_eq!(r.code, 0, "{}", r.all());
    // Another Cilium release replaces the cluster.
    w.write(&lab.config(&body("https://cache.lab", "1.17.4")));
    let r = w.tf(&["plan"]).ok();
    assert!(r.stdout.contains("must be replaced") && r.stdout.contains("cilium_version"), "{}", r.stdout);
    w.destroy().ok();
    assert!(!lab.dir().exists(), "the instance folder is left");
}
}
