//! `VmLab`: the real-VM test fixture. It makes a network namespace of its own, starts a
//! private libvirt (virtlogd + libvirtd) inside it with `scripts/vm/lab.sh` (private mount
//! namespace, so libvirt's global paths are the lab's own), adds the locally built test box
//! (`scripts/vm/build-box.sh`, cached per machine) to a private `VAGRANT_HOME`, and hands out
//! a `VagrantConfig` whose every command runs inside the lab. Dropping it (also on panic)
//! removes every domain, network, volume and daemon of the lab (by PID) and the namespace.
//!
//! Nothing here touches the root namespace's routes, addresses, forwarding or firewall: the
//! bridges and libvirt's iptables rules live in the lab's namespace, which has no uplink.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use homelab::backend::vagrant::{Grace, Hypervisor, LibvirtDriver, VagrantConfig};

use super::vagrant::{ensure_vm_packages, repo_root};

/// Name under which the test box is added to Vagrant.
pub const TEST_BOX: &str = "homelab-test";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Build (or take from the cache) the test box; its path. `HOMELAB_TEST_BOX` (set by
/// scripts/test.sh, which builds it before the tests) names a box already built. Panics with
/// the builder's output.
pub fn ensure_test_box() -> PathBuf {
    static BOX: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BOX.get_or_init(|| {
        if let Some(p) = std::env::var_os("HOMELAB_TEST_BOX").map(PathBuf::from) {
            if p.is_file() {
                return Ok(p);
            }
        }
        let t = Instant::now();
        let out = Command::new("timeout")
            .args(["900", "bash"])
            .arg(repo_root().join("scripts/vm/build-box.sh"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "build-box.sh failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        eprintln!(
            "test box ready in {:.1}s: {}",
            t.elapsed().as_secs_f64(),
            path.display()
        );
        Ok(path)
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("building the test box: {e}"),
    }
}

/// Run `argv` with a hard timeout (the `timeout` command, KILL 10 s after TERM).
pub fn run_with_timeout(argv: &[&str], timeout: Duration, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", &timeout.as_secs().to_string()])
        .args(argv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
}

/// Text of both streams of an output.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A private libvirt in a network namespace of its own, with the test box added to Vagrant.
pub struct VmLab {
    /// The lab's network namespace.
    pub netns: String,
    /// Folder of the lab's libvirt state (bind-mounted over libvirt's paths in the lab).
    pub state: PathBuf,
    /// The registry folder to give the backend.
    pub home: PathBuf,
    /// Vagrant's data folder (boxes) for this lab.
    pub vagrant_home: PathBuf,
    /// Holds everything above; removed last.
    _dir: tempfile::TempDir,
}

impl VmLab {
    /// Set up packages and the box, then start the lab. Panics (after cleaning up) on failure.
    pub fn start() -> VmLab {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the real-VM tests need root (network namespaces, libvirtd)"
        );
        ensure_vm_packages();
        let box_path = ensure_test_box();
        let t = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("homelab-vmlab-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let netns = format!(
            "hlvm{}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        reap_stale_labs();
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string()).unwrap();
        std::fs::write(dir.path().join("netns"), &netns).unwrap();
        let lab = VmLab {
            netns: netns.clone(),
            state: dir.path().join("libvirt"),
            home: dir.path().join("home"),
            vagrant_home: dir.path().join("vagrant.d"),
            _dir: dir,
        };
        std::fs::create_dir_all(&lab.home).unwrap();
        std::fs::create_dir_all(&lab.vagrant_home).unwrap();
        let out = run_with_timeout(
            &["ip", "netns", "add", &netns],
            Duration::from_secs(30),
            &[],
        );
        assert!(out.status.success(), "ip netns add: {}", text(&out));
        let out = run_with_timeout(
            &["ip", "-n", &netns, "link", "set", "lo", "up"],
            Duration::from_secs(30),
            &[],
        );
        assert!(out.status.success(), "lo up: {}", text(&out));
        let script = repo_root().join("scripts/vm/lab.sh");
        let out = run_with_timeout(
            &[
                "bash",
                script.to_str().unwrap(),
                "up",
                &netns,
                lab.state.to_str().unwrap(),
            ],
            Duration::from_secs(120),
            &[],
        );
        assert!(out.status.success(), "lab.sh up: {}", text(&out));
        let out = lab.run(
            &[
                "vagrant",
                "box",
                "add",
                "--force",
                "--name",
                TEST_BOX,
                box_path.to_str().unwrap(),
            ],
            Duration::from_secs(300),
        );
        assert!(out.status.success(), "vagrant box add: {}", text(&out));
        eprintln!("VM lab {netns} ready in {:.1}s", t.elapsed().as_secs_f64());
        lab
    }

    /// The prefix that runs a command inside the lab (its network and mount namespaces).
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount={}", self.state.join("mntns").display()),
            format!("--net=/run/netns/{}", self.netns),
            "--".into(),
        ]
    }

    /// Environment every vagrant run in the lab gets.
    pub fn vagrant_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "VAGRANT_HOME".into(),
                self.vagrant_home.display().to_string(),
            ),
            ("VAGRANT_CHECKPOINT_DISABLE".into(), "1".into()),
        ]
    }

    /// A backend configuration for this lab: libvirt with QEMU software emulation, every
    /// command inside the lab, forwarding in the lab's namespace.
    pub fn backend_config(&self) -> VagrantConfig {
        let mut cfg = VagrantConfig::new(&self.home);
        cfg.hypervisor = Hypervisor::Libvirt;
        cfg.libvirt_driver = LibvirtDriver::Qemu;
        cfg.env = self.vagrant_env();
        cfg.exec_prefix = self.exec_prefix();
        cfg.host_netns = Some(self.netns.clone());
        cfg.grace = Grace {
            interrupt: Duration::from_secs(15),
            terminate: Duration::from_secs(5),
        };
        cfg
    }

    /// Run `argv` inside the lab with a hard timeout.
    pub fn run(&self, argv: &[&str], timeout: Duration) -> Output {
        let prefix = self.exec_prefix();
        let mut full: Vec<&str> = prefix.iter().map(String::as_str).collect();
        full.extend_from_slice(argv);
        let env = self.vagrant_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_with_timeout(&full, timeout, &env)
    }

    /// `vagrant <args>` for the instance folder `dir`, inside the lab.
    pub fn vagrant(&self, dir: &Path, args: &[&str], timeout: Duration) -> Output {
        let cwd = format!("VAGRANT_CWD={}", dir.display());
        let mut argv = vec!["env", cwd.as_str(), "vagrant"];
        argv.extend_from_slice(args);
        self.run(&argv, timeout)
    }

    /// Run a shell command in a VM with `vagrant ssh -c` (stdout; panics on failure).
    pub fn ssh(&self, dir: &Path, machine: &str, command: &str) -> String {
        let out = self.vagrant(
            dir,
            &["ssh", machine, "--no-tty", "-c", command],
            Duration::from_secs(180),
        );
        assert!(
            out.status.success(),
            "vagrant ssh {machine} -c {command:?}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// IPv4 addresses by interface (loopback left out) and the routing table of a VM.
    pub fn addresses_and_routes(
        &self,
        dir: &Path,
        machine: &str,
    ) -> (std::collections::BTreeMap<String, String>, String) {
        let out = self.ssh(
            dir,
            machine,
            "ip -4 -j addr show; echo '--- routes'; ip -4 route show",
        );
        let (addrs, routes) = out
            .split_once("--- routes")
            .unwrap_or_else(|| panic!("{out}"));
        let v: serde_json::Value =
            serde_json::from_str(addrs.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let addrs = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] != "lo")
            .filter_map(|l| {
                let a = l["addr_info"].as_array()?.first()?["local"]
                    .as_str()?
                    .to_string();
                Some((l["ifname"].as_str()?.to_string(), a))
            })
            .collect();
        (addrs, routes.to_string())
    }

    /// `virsh <args>` inside the lab (stdout; panics on failure).
    pub fn virsh(&self, args: &[&str]) -> String {
        let mut argv = vec!["virsh", "-q", "-c", "qemu:///system"];
        argv.extend_from_slice(args);
        let out = self.run(&argv, Duration::from_secs(60));
        assert!(out.status.success(), "virsh {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn names(out: String) -> Vec<String> {
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Every libvirt domain of the lab.
    pub fn domains(&self) -> Vec<String> {
        Self::names(self.virsh(&["list", "--all", "--name"]))
    }

    /// Every libvirt network of the lab.
    pub fn networks(&self) -> Vec<String> {
        Self::names(self.virsh(&["net-list", "--all", "--name"]))
    }

    /// Every volume of the `default` pool (none when the pool does not exist yet).
    pub fn volumes(&self) -> Vec<String> {
        let pools = Self::names(self.virsh(&["pool-list", "--all", "--name"]));
        if !pools.iter().any(|p| p == "default") {
            return Vec::new();
        }
        self.virsh(&["vol-list", "default"])
            .lines()
            .skip_while(|l| !l.trim_start().starts_with('-'))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }

    /// Volumes that are not the shared base image of a box (those are Vagrant's box cache,
    /// kept across instances like the box itself).
    pub fn instance_volumes(&self) -> Vec<String> {
        self.volumes()
            .into_iter()
            .filter(|v| !v.contains("_vagrant_box_image_"))
            .collect()
    }
}

/// Log a step of a VM test with its time, and fail once the test is over `budget`.
pub fn step(t0: Instant, budget: Duration, what: &str) {
    let e = t0.elapsed();
    eprintln!("[{:>6.1}s] {what}", e.as_secs_f64());
    assert!(e < budget, "over the {}s budget before: {what}", budget.as_secs());
}

/// Tear down labs whose test process died without its Drop running (killed by a test
/// runner's timeout, for example): their daemons (by PID), namespace and files.
fn reap_stale_labs() {
    for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("homelab-vmlab-") {
            continue;
        }
        let owner: Option<u32> = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive || owner.is_none() {
            continue;
        }
        eprintln!("reaping the VM lab left by dead test process {owner:?}: {}", dir.display());
        let script = repo_root().join("scripts/vm/lab.sh");
        let state = dir.join("libvirt");
        let _ = run_with_timeout(
            &["bash", script.to_str().unwrap(), "down", state.to_str().unwrap()],
            Duration::from_secs(180),
            &[],
        );
        if let Ok(ns) = std::fs::read_to_string(dir.join("netns")) {
            let _ = run_with_timeout(&["ip", "netns", "del", ns.trim()], Duration::from_secs(30), &[]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Drop for VmLab {
    fn drop(&mut self) {
        let script = repo_root().join("scripts/vm/lab.sh");
        let out = run_with_timeout(
            &[
                "bash",
                script.to_str().unwrap(),
                "down",
                self.state.to_str().unwrap(),
            ],
            Duration::from_secs(180),
            &[],
        );
        if !out.status.success() {
            eprintln!("lab.sh down {}: {}", self.state.display(), text(&out));
        }
        let _ = run_with_timeout(
            &["ip", "netns", "del", &self.netns],
            Duration::from_secs(30),
            &[],
        );
    }
}
