//! Acceptance tests of applies and destroys killed part way (SIGKILL of the provider, or of
//! Terraform itself), on real Terraform and real namespaces: the next `apply` converges with no
//! manual step (it adopts what the killed run began), the plan after it is empty, and `destroy`
//! leaves no namespace of the lab host. Also `destroy` straight after an interrupted apply.
//!
//! Where to kill: the provider's `ip` and `nft` are wrappers of the test's own (first on
//! Terraform's PATH, so the provider runs them) that run the real tool, except that the first
//! call matching the pause pattern (in its arguments, or its stdin for `ip -batch -` and
//! `nft -f -`) waits (after touching `paused`) until the test creates `go`.
//! The test kills while the provider is held exactly there, then lets the held call run (it
//! then acts for a dead provider, as a real kill mid-command leaves it).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::acceptance;
use crate::util::lab::{instance, plan_is_empty, Lab};
use crate::util::netns::namespaces_of;
use crate::util::terraform::Workdir;

/// The pause wrappers for one test.
struct Pause {
    dir: tempfile::TempDir,
}

impl Pause {
    /// Wrappers for `ip` and `nft` that hold the first call whose arguments contain `pattern`.
    fn new(pattern: &str) -> Pause {
        let dir = tempfile::Builder::new().prefix("homelab-pause-").tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let state = dir.path().display().to_string();
        for tool in ["ip", "nft"] {
            let real = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("no {tool}"));
            // Commands fed on stdin (`ip -batch -`, `nft -f -`) are matched on it too.
            let script = format!(
                "#!/bin/sh\n# Test wrapper: the real {tool}, held once at the pause pattern.\nin=''\ncase \" $* \" in\n  *' -batch - '*|*' -f - '*) in=\"$(mktemp)\"; cat > \"$in\" ;;\nesac\nhay=\"$*\"\n[ -n \"$in\" ] && hay=\"$hay $(cat \"$in\")\"\ncase \"$hay\" in\n  *'{pattern}'*)\n    if mkdir '{state}/taken' 2>/dev/null; then\n      touch '{state}/paused'\n      while [ -d '{state}' ] && [ ! -e '{state}/go' ]; do sleep 0.05; done\n    fi ;;\nesac\nif [ -n \"$in\" ]; then\n  '{real}' \"$@\" < \"$in\"; rc=$?; rm -f \"$in\"; exit $rc\nfi\nexec '{real}' \"$@\"\n",
                real = real.display()
            );
            let path = bin.join(tool);
            std::fs::write(&path, script).unwrap();
            std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&path).unwrap().permissions(), 0o755);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        Pause { dir }
    }

    /// PATH with the wrappers first.
    fn path(&self) -> String {
        format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap_or_default())
    }

    /// Wait until a call is held there.
    fn wait_held(&self, timeout: Duration) {
        let t = Instant::now();
        while !self.dir.path().join("paused").exists() {
            assert!(t.elapsed() < timeout, "nothing reached the pause in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Let the held call run.
    fn release(&self) {
        std::fs::write(self.dir.path().join("go"), b"").unwrap();
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        // Never leave a held call behind.
        let _ = std::fs::write(self.dir.path().join("go"), b"");
    }
}

/// The provider processes under Terraform `tf` (named terraform-provider-homelab), each with
/// its parent: the Terraform process that drives it. Terraform 1.0.3 runs its core in a child
/// of the command's process (panicwrap); newer ones run it in that process.
pub(crate) fn providers_of(tf: u32) -> Vec<(u32, u32)> {
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        procs.push((pid, ppid, String::from_utf8_lossy(&cmd).contains("terraform-provider-homelab")));
    }
    let under = |mut p: u32| {
        for _ in 0..8 {
            if p == tf {
                return true;
            }
            match procs.iter().find(|(pid, _, _)| *pid == p) {
                Some((_, pp, _)) if *pp > 1 => p = *pp,
                _ => return false,
            }
        }
        false
    };
    procs.iter().filter(|(pid, ppid, named)| *named && *pid != tf && under(*ppid)).map(|(pid, ppid, _)| (*pid, *ppid)).collect()
}

/// The provider binary's own subcommand `args` on the registry in `home`: exit code, and
/// stdout then stderr.
pub(crate) fn homelab_cli(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab"))
        .args(args)
        .args(["--home", &home.display().to_string()])
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

pub(crate) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

pub(crate) fn kill(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// A Terraform run in the background. Dropped while it still runs (a failed assertion), it
/// kills that Terraform and its providers, so that nothing goes on making labs after the test.
pub(crate) struct Running(pub(crate) Child);

impl Running {
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        for (provider, core) in providers_of(self.0.id()) {
            kill(provider);
            kill(core);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Terraform `args` in `w`, in the background, with the pause wrappers on its PATH.
fn spawn(w: &Workdir, pause: &Pause, args: &[&str]) -> (Running, PathBuf) {
    let (mut cmd, _) = w.command(args);
    let log = w.path().join(format!("{}.out", args[0]));
    let out = std::fs::File::create(&log).unwrap();
    cmd.env("PATH", pause.path()).stdout(Stdio::from(out.try_clone().unwrap())).stderr(Stdio::from(out));
    (Running(cmd.spawn().expect("terraform starts")), log)
}

/// What is left to wait for: Terraform's exit (it reports the crash).
fn wait(mut child: Running, timeout: Duration) {
    let t = Instant::now();
    loop {
        if child.0.try_wait().unwrap().is_some() {
            return;
        }
        assert!(t.elapsed() < timeout, "terraform did not end within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kill the provider of `child` once a call is held at `pause`, then let the call run.
fn kill_provider_at(child: Running, pause: &Pause) {
    pause.wait_held(Duration::from_secs(120));
    let providers = providers_of(child.id());
    assert!(!providers.is_empty(), "no provider process under terraform {}", child.id());
    for (p, _) in &providers {
        kill(*p);
    }
    pause.release();
    wait(child, Duration::from_secs(120));
}

/// The next apply converges, the plan after it is empty, and destroy leaves nothing.
fn converges_then_destroys_everything(lab: &Lab, w: &Workdir, events_expected: &[&str]) {
    let r = w.apply();
    assert_eq!(r.code, 0, "the apply after the kill failed:\n{}", r.all());
    plan_is_empty(w);
    let actions: Vec<String> = homelab::registry::Store::events(&lab.store()).unwrap().into_iter().map(|e| e.action).collect();
    for e in events_expected {
        assert!(actions.iter().any(|a| a == e), "no {e} event in {actions:?}");
    }
    w.destroy().ok();
    assert!(namespaces_of(&lab.host.name).is_empty(), "left: {:?}", namespaces_of(&lab.host.name));
    let doc = homelab::registry::Store::load(&lab.store()).unwrap();
    assert!(doc.instances.is_empty() && doc.federations.is_empty(), "left in the registry: {:?}", doc.instances.keys().collect::<Vec<_>>());
}

fn six(extra: &str) -> String {
    (0..6).map(|i| instance(&format!("k{i}"), "  workers = 1\n")).collect::<String>() + extra
}

acceptance! {
/// Killed before any lab exists, with a node namespace half-way, and after some labs are
/// complete: each time the next apply adopts what was begun and converges.
fn provider_killed_at_three_points_of_an_apply_the_next_apply_converges(tf: Tf) {
    for (point, pattern, held) in [("before any lab", "netns add hlt", None), ("mid-namespace-creation", "-k3-worker-1", Some("k3")), ("after some labs", "-k5-cp-1", Some("k5"))] {
        let lab = Lab::new(tf);
        let w = lab.workdir(&six(""));
        let pattern = if point == "before any lab" { format!("netns add {}", lab.host.name) } else { format!("{}{pattern}", lab.host.name) };
        // After some labs: the others complete while k5 is held.
        killed_run(&w, &["apply", "-auto-approve"], &pattern, if point == "after some labs" { 3 } else { 0 });
        eprintln!("{point}: killed; state holds {:?}", w.tf(&["state", "list"]).stdout.lines().collect::<Vec<_>>());
        let cli = |args: &[&str]| homelab_cli(lab.home.path(), args);
        let (_, listed) = cli(&["registry", "list"]);
        let (code, checked) = cli(&["registry", "check"]);
        if point != "before any lab" {
            assert!(listed.contains("interrupted"), "{point}: no interrupted creation listed:\n{listed}");
            assert_eq!(code, Some(3), "{point}: registry check:\n{checked}");
            assert!(checked.contains("instances remove") && checked.contains(&w.path().canonicalize().unwrap().display().to_string()), "{point}: {checked}");
        }
        assert!(!listed.contains("creating (pid"), "{point}: a killed provider listed as running:\n{listed}");
        if let Some(held) = held {
            // The data source, read from another folder, shows the held one as interrupted,
            // with its owner and since when ...
            let reader = lab.workdir(&format!(
                "data \"homelab_cidr_allocation\" \"x\" {{\n  name = \"{held}\"\n}}\noutput \"x\" {{\n  value = data.homelab_cidr_allocation.x\n}}\n"
            ));
            reader.apply().ok();
            let x = &reader.outputs()["x"]["value"];
            assert_eq!(x["status"], "interrupted", "{point}: {x}");
            let dir = w.path().canonicalize().unwrap().display().to_string();
            assert!(x["owner"].as_str().is_some_and(|o| o.contains(&dir)), "{point}: {x}");
            assert!(x["since"].as_str().is_some_and(|s| s.starts_with("20")), "{point}: {x}");
            // ... and every plan of the owning workspace warns, naming it.
            let plan = w.tf(&["plan"]).ok().all();
            let said = plan.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                said.contains("An apply of this workspace was killed while creating") && said.contains(&format!("`{held}` (since")),
                "{point}: {plan}"
            );
        }
        converges_then_destroys_everything(&lab, &w, if point == "before any lab" { &[] } else { &["instance.adopt"] });
    }
}
}

acceptance! {
/// Killed while opening a federation: the next apply adopts it (no "already federated").
fn provider_killed_during_a_federation_the_next_apply_converges(tf: Tf) {
    let lab = Lab::new(tf);
    let fed = "resource \"homelab_federation\" \"f\" {\n  instances = [homelab_instance.k0.name, homelab_instance.k1.name]\n  reason    = \"INC-7\"\n}\n";
    let w = lab.workdir(&six(fed));
    killed_run(&w, &["apply", "-auto-approve"], "homelab:k0+k1", 0);
    converges_then_destroys_everything(&lab, &w, &["federation.adopt"]);
}
}

acceptance! {
/// Terraform itself killed: its provider stops too (it watches its parent), and the next apply
/// adopts what was begun.
fn terraform_killed_mid_apply_the_next_apply_converges(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&six(""));
    let pause = Pause::new(&format!("{}-k3-worker-1", lab.host.name));
    let (child, _) = spawn(&w, &pause, &["apply", "-auto-approve"]);
    pause.wait_held(Duration::from_secs(120));
    let found = providers_of(child.id());
    assert!(!found.is_empty(), "no provider process under terraform {}", child.id());
    // Terraform's core (the providers' parent) and the command's process, if they differ.
    for (_, core) in &found {
        kill(*core);
    }
    kill(child.id());
    let providers: Vec<u32> = found.iter().map(|(p, _)| *p).collect();
    pause.release();
    wait(child, Duration::from_secs(30));
    let t = Instant::now();
    while providers.iter().any(|p| alive(*p)) {
        assert!(t.elapsed() < Duration::from_secs(60), "the provider outlived Terraform: {providers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    converges_then_destroys_everything(&lab, &w, &["instance.adopt"]);
}
}

/// Whatever the registry holds, by name.
fn registry_names(lab: &Lab) -> Vec<String> {
    homelab::registry::Store::load(&lab.store())
        .unwrap()
        .instances
        .into_values()
        .map(|e| format!("{} ({:?}, {:?})", e.name, e.status, e.creating))
        .collect()
}

/// Apply (or destroy) `args`, with the provider killed while a call matching `pattern` is held,
/// once `complete` resources of the run are done.
fn killed_run(w: &Workdir, args: &[&str], pattern: &str, complete: usize) {
    let pause = Pause::new(pattern);
    let (child, log) = spawn(w, &pause, args);
    pause.wait_held(Duration::from_secs(120));
    let t = Instant::now();
    let done = |l: &str| l.matches("Creation complete").count() + l.matches("Destruction complete").count();
    while done(&std::fs::read_to_string(&log).unwrap_or_default()) < complete && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_provider_at(child, &pause);
    if std::env::var_os("HOMELAB_TEST_SHOW_KILLED").is_some() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
}

acceptance! {
/// Killed during a destroy: the next destroy finishes it, and the next apply instead re-makes
/// what it took away. Straight after an apply killed when some labs were complete, destroy
/// leaves nothing either (it also removes what that apply began and no state holds).
fn killed_destroy_and_destroy_after_a_killed_apply_leave_nothing(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&six(""));
    w.apply().ok();
    killed_run(&w, &["destroy", "-auto-approve"], &format!("{}-k3", lab.host.name), 2);
    let r = w.destroy();
    assert_eq!(r.code, 0, "the destroy after the killed destroy failed:\n{}", r.all());
    assert!(namespaces_of(&lab.host.name).is_empty(), "left: {:?}", namespaces_of(&lab.host.name));
    assert!(registry_names(&lab).is_empty(), "left in the registry: {:?}", registry_names(&lab));

    // Killed destroy, then apply: everything is back, and the plan after it is empty.
    w.apply().ok();
    killed_run(&w, &["destroy", "-auto-approve"], &format!("{}-k3", lab.host.name), 2);
    let r = w.apply();
    assert_eq!(r.code, 0, "the apply after the killed destroy failed:\n{}", r.all());
    plan_is_empty(&w);
    assert_eq!(w.tf(&["state", "list"]).stdout.lines().count(), 6, "not all six instances are back");

    // Killed apply, then destroy.
    w.destroy().ok();
    killed_run(&w, &["apply", "-auto-approve"], &format!("{}-k5-cp-1", lab.host.name), 3);
    let r = w.destroy();
    assert_eq!(r.code, 0, "the destroy after the killed apply failed:\n{}", r.all());
    assert!(namespaces_of(&lab.host.name).is_empty(), "left: {:?}", namespaces_of(&lab.host.name));
    assert!(registry_names(&lab).is_empty(), "left in the registry: {:?}", registry_names(&lab));
}
}

acceptance! {
/// The workspace of a killed apply is gone for good (its folder deleted): `registry check`
/// names what waits and exits 3; `instances remove` takes each away (labs and networks), and
/// the check is clean again.
fn a_killed_apply_whose_workspace_is_gone_is_removed_by_name(tf: Tf) {
    let lab = Lab::new(tf);
    let w = lab.workdir(&(0..3).map(|i| instance(&format!("k{i}"), "  workers = 1\n")).collect::<String>());
    killed_run(&w, &["apply", "-auto-approve"], &format!("{}-k2-worker-1", lab.host.name), 0);
    drop(w);
    let cli = |args: &[&str]| homelab_cli(lab.home.path(), args);
    let (code, checked) = cli(&["registry", "check"]);
    assert_eq!(code, Some(3), "{checked}");
    assert!(checked.contains("k2: interrupted since") && checked.contains("instances remove k2"), "{checked}");
    assert!(!namespaces_of(&lab.host.name).is_empty(), "the killed apply made nothing?");
    let names: Vec<String> = homelab::registry::Store::load(&lab.store()).unwrap().instances.into_keys().collect();
    let mut args = vec!["instances", "remove"];
    args.extend(names.iter().map(String::as_str));
    let (code, removed) = cli(&args);
    assert_eq!(code, Some(0), "{removed}");
    for n in &names {
        assert!(removed.contains(&format!("removed {n}")), "{removed}");
    }
    assert!(namespaces_of(&lab.host.name).is_empty(), "left: {:?}", namespaces_of(&lab.host.name));
    let (code, checked) = cli(&["registry", "check"]);
    assert_eq!(code, Some(0), "{checked}");
    assert!(checked.contains("no interrupted creations") && checked.contains("0 instance(s)"), "{checked}");
}
}
