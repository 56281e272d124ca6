//! `scripts/quickstart.sh --etcd` for real: it starts a one-member etcd on loopback, applies
//! `examples/quickstart-etcd` from the workspaces host-a and host-b (two `netns` lab hosts sharing
//! the etcd registry), prints a matrix in which every pair of the six instances is disjoint and
//! both hosts are named, and leaves all six instances in the registry; a second run reuses the
//! running etcd and changes nothing; `--etcd --destroy` leaves no namespace of either host, stops
//! that etcd and removes its folder.
//!
//! Isolation, as for the other acceptance tests: the script's etcd folder
//! (`HOMELAB_QUICKSTART_ETCD_DIR`, which also holds the hosts' homes) and the Terraform folder it
//! applies (`HOMELAB_QUICKSTART_ETCD_EXAMPLE`, a copy of the example's `.tf` files, so that its
//! workspaces' states are the test's own) are in a temp folder, and the lab hosts' namespaces are
//! named from a unique lab host name (`TF_VAR_netns_host_prefix`), each with a [`LabHostGuard`].
//! A developer's own `.tools/etcd` and quickstart workspaces are never touched. What the script
//! shares with the developer is what it always does: it builds and packs the release provider
//! into `.tools/release` (the first time that takes minutes). When the test fails, its guard runs
//! `--etcd --destroy` and then SIGKILLs the etcd by its PID (once checked to be that etcd).
//! Killed with SIGKILL itself, the test leaves that etcd running (its PID is in
//! `<temp>/etcd/pid`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use homelab::registry::etcd::{EtcdConfig, EtcdStore};
use homelab::registry::Store;

use crate::util::netns::{namespaces_of, unique_host, LabHostGuard};
use crate::util::release::without_cargo_test_env;
use crate::util::terraform::repo_root;

/// The instances of both hosts, in the script's order (by workspace, then by name).
const NAMES: [&str; 6] = ["acme-a", "globex-a", "initech-a", "acme-b", "globex-b", "initech-b"];

/// One run of the quickstart in folders of the test's own. Dropping it destroys what is left.
struct Quickstart {
    /// The two lab hosts (`<prefix>hosta`, `<prefix>hostb`); their namespaces go when dropped.
    hosts: [LabHostGuard; 2],
    /// The start of both lab hosts' names.
    prefix: String,
    /// The PID of the etcd the script started, once known.
    etcd_pid: Option<u32>,
    /// `--etcd --destroy` succeeded.
    destroyed: bool,
    /// Holds `etcd/` (the script's etcd folder) and `example/` (the Terraform folder).
    tmp: tempfile::TempDir,
}

impl Quickstart {
    fn new() -> Quickstart {
        let prefix = unique_host();
        let tmp = tempfile::Builder::new().prefix("homelab-quickstart-etcd-").tempdir().unwrap();
        let example = tmp.path().join("example");
        std::fs::create_dir(&example).unwrap();
        let source = repo_root().join("examples/quickstart-etcd");
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tf") {
                std::fs::copy(&path, example.join(path.file_name().unwrap())).unwrap();
            }
        }
        assert!(example.join("main.tf").is_file(), "examples/quickstart-etcd has no main.tf");
        Quickstart {
            hosts: ["hosta", "hostb"].map(|h| LabHostGuard { name: format!("{prefix}{h}") }),
            prefix,
            etcd_pid: None,
            destroyed: false,
            tmp,
        }
    }

    fn etcd_dir(&self) -> PathBuf {
        self.tmp.path().join("etcd")
    }

    /// `scripts/quickstart.sh ARGS` in the test's folders; its output is shown with the test's.
    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("bash");
        c.arg(repo_root().join("scripts/quickstart.sh"))
            .args(args)
            .env("HOMELAB_QUICKSTART_ETCD_DIR", self.etcd_dir())
            .env("HOMELAB_QUICKSTART_ETCD_EXAMPLE", self.tmp.path().join("example"))
            .env("TF_VAR_netns_host_prefix", &self.prefix)
            .env_remove("TF_WORKSPACE")
            .env_remove("TF_DATA_DIR")
            .env_remove("TF_LOG")
            .env_remove("TF_CLI_ARGS")
            .stdin(Stdio::null());
        without_cargo_test_env(&mut c);
        let started = std::time::Instant::now();
        let out = c.output().expect("run scripts/quickstart.sh");
        println!(
            "--- scripts/quickstart.sh {} ({:.0?}, {}):\n{}\n--- stderr:\n{}",
            args.join(" "),
            started.elapsed(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `run`, which must succeed; its stdout and stderr.
    fn run_ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert!(out.status.success(), "scripts/quickstart.sh {args:?} failed ({}): see its output above", out.status);
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// A file of the etcd folder, trimmed.
    fn etcd_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.etcd_dir().join(name)).ok().map(|s| s.trim().to_string())
    }

    /// Whether `pid` is a live (not zombie) `/usr/bin/etcd` with this test's data dir.
    fn is_our_etcd(&self, pid: u32) -> bool {
        let proc = Path::new("/proc").join(pid.to_string());
        let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else { return false };
        // The state follows the command name in parentheses: a reaped-late child is a zombie.
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            return false;
        }
        let exe = std::fs::read_link(proc.join("exe")).ok();
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let data_dir = format!("--data-dir={}/data", self.etcd_dir().display());
        exe.as_deref() == Some(Path::new("/usr/bin/etcd"))
            && cmdline.split(|b| *b == 0).any(|a| a == data_dir.as_bytes())
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if !self.destroyed && self.etcd_dir().exists() {
            let _ = self.run(&["--etcd", "--destroy"]);
        }
        let pids = self.etcd_pid.into_iter().chain(self.etcd_file("pid").and_then(|p| p.parse().ok()));
        for pid in pids.collect::<Vec<u32>>() {
            if self.is_our_etcd(pid) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        // Then the fields: the lab hosts' namespaces, then the temp folder.
    }
}

/// This machine's host name, as the provider records it.
fn machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

/// The rows of the overlap matrix (after the line starting with "Overlap"), split in words.
fn matrix(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("Overlap of their networks")).skip(1);
    let header: Vec<&str> = lines.by_ref().find(|l| !l.trim().is_empty()).expect("a matrix header").split_whitespace().collect();
    assert_eq!(header, NAMES, "{stdout}");
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn quickstart_etcd_applies_two_hosts_on_one_registry_prints_a_disjoint_matrix_reuses_its_etcd_and_destroys_everything() {
    let mut q = Quickstart::new();
    let [host_a, host_b] = [0, 1].map(|i| format!("{}/{}", machine(), q.hosts[i].name));

    let (stdout, _) = q.run_ok(&["--etcd"]);
    let pid: u32 = q.etcd_file("pid").expect("the script writes etcd's PID").parse().unwrap();
    q.etcd_pid = Some(pid);
    assert!(q.is_our_etcd(pid), "etcd (PID {pid}) is not running");
    let port: u16 = q.etcd_file("port").expect("the script writes etcd's port").parse().unwrap();
    // etcd listens on loopback only (its client and peer ports).
    let listening = String::from_utf8(Command::new("ss").args(["-Hltnp"]).output().unwrap().stdout).unwrap();
    let own: Vec<&str> = listening.lines().filter(|l| l.contains(&format!("pid={pid},"))).collect();
    assert_eq!(own.len(), 2, "{listening}");
    for l in &own {
        assert!(l.split_whitespace().nth(3).is_some_and(|a| a.starts_with("127.0.0.1:")), "{l}");
    }

    // The networks table names each instance's host; the matrix says disjoint for every pair.
    for (i, name) in NAMES.iter().enumerate() {
        let host = if i < 3 { &host_a } else { &host_b };
        let row = stdout.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no row {name}:\n{stdout}"));
        assert!(row.split_whitespace().any(|w| w == host), "{name} is not on {host}: {row}");
    }
    let rows = matrix(&stdout);
    assert_eq!(rows.len(), 6, "{stdout}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], NAMES[i], "{stdout}");
        for (j, cell) in row[1..].iter().enumerate() {
            assert_eq!(cell, if i == j { "-" } else { "disjoint" }, "{} × {}:\n{stdout}", NAMES[i], NAMES[j]);
        }
    }
    assert!(stdout.contains(&format!("All 15 pairs of instances are disjoint: the hosts {host_a} and {host_b}")), "{stdout}");
    assert!(!stdout.contains("OVERLAP"), "{stdout}");

    // The registry on etcd holds all six, each on its host.
    let store = EtcdStore::new(EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")], "/homelab/"));
    let doc = store.load().unwrap();
    let mut expected: Vec<&str> = NAMES.to_vec();
    expected.sort();
    assert_eq!(doc.instances.keys().map(String::as_str).collect::<Vec<_>>(), expected);
    for (i, name) in NAMES.iter().enumerate() {
        let host = if i < 3 { &host_a } else { &host_b };
        assert_eq!(doc.instances[*name].lab.as_ref().and_then(|l| l.host.as_deref()), Some(host.as_str()), "{name}");
    }
    store.verify_events().unwrap();
    for h in &q.hosts {
        assert!(!namespaces_of(&h.name).is_empty(), "no namespaces of lab host {}", h.name);
    }

    // Again: the running etcd is reused and both workspaces plan nothing.
    let (again, stderr) = q.run_ok(&["--etcd"]);
    assert!(stderr.contains(&format!("reusing the running etcd: PID {pid}")), "{stderr}");
    assert_eq!(q.etcd_file("pid").as_deref(), Some(pid.to_string().as_str()));
    assert_eq!(again.matches("Resources: 0 added, 0 changed, 0 destroyed.").count(), 2, "{again}");
    assert_eq!(matrix(&again), rows, "{again}");

    // Destroy: no namespace of either host, etcd stopped, its folder gone.
    q.run_ok(&["--etcd", "--destroy"]);
    q.destroyed = true;
    for h in &q.hosts {
        assert!(namespaces_of(&h.name).is_empty(), "{:?}", namespaces_of(&h.name));
    }
    assert!(!q.is_our_etcd(pid), "etcd (PID {pid}) still runs");
    assert!(!q.etcd_dir().exists(), "{} is still there", q.etcd_dir().display());
    let example = q.tmp.path().join("example");
    assert!(!example.join("terraform.tfstate.d").exists(), "the workspaces are still there");
}
