//! The Vagrant backend's orchestration through the `Backend` trait, with a FAKE `vagrant`
//! (tests/fixtures/vagrant/fake-vagrant, a shell script standing in for the CLI: no VM can be
//! made that fast): output streamed line by line into the log, the timeout and Terraform's
//! cancellation stopping the whole process group (grandchild included), a failed `vagrant up`
//! reported with command, exit code and last lines, only machines that are not running
//! brought up, removed nodes destroyed with their old definitions, halted and missing machines
//! observed, guest routes, join secrets kept out of the log and the errors. Parsing uses real `--machine-readable` samples captured from real
//! libvirt VMs on this kind of machine (tests/fixtures/vagrant/status-*.txt).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homelab::backend::vagrant::{
    parse_status, Grace, Hypervisor, LibvirtDriver, VagrantBackend, VagrantConfig,
};
use homelab::backend::{Backend, BackendError, LabSpec, OpControl};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::util::vagrant::{fake_vagrant, status_sample, test_options, vagrant_spec};

/// One log event: when, level, message.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    level: tracing::Level,
    message: String,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Event>>>);

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut v = MessageVisitor(String::new());
        event.record(&mut v);
        self.0.lock().unwrap().push(Event {
            at: Instant::now(),
            level: *event.metadata().level(),
            message: v.0,
        });
    }
}

/// A temporary home, a fake-vagrant backend (VirtualBox, so no virsh is involved) and the
/// file the fake logs its invocations to.
struct Fake {
    dir: tempfile::TempDir,
    log: PathBuf,
    pids: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("invocations.log");
        let pids = dir.path().join("pids");
        Fake { dir, log, pids }
    }

    fn config(&self, extra_env: &[(&str, &str)]) -> VagrantConfig {
        let mut cfg = VagrantConfig::new(self.dir.path().join("home"));
        cfg.vagrant_bin = fake_vagrant();
        cfg.hypervisor = Hypervisor::VirtualBox;
        cfg.env = vec![
            ("FAKE_VAGRANT_LOG".into(), self.log.display().to_string()),
            ("FAKE_VAGRANT_PIDS".into(), self.pids.display().to_string()),
        ];
        cfg.env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        cfg.grace = Grace {
            interrupt: Duration::from_secs(1),
            terminate: Duration::from_secs(1),
        };
        cfg
    }

    fn backend(&self, extra_env: &[(&str, &str)]) -> VagrantBackend {
        VagrantBackend::new(self.config(extra_env))
    }

    fn invocations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// `(grandchild pid, process group)` pairs the hanging fake recorded.
    fn hung_processes(&self) -> Vec<(i32, i32)> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect()
    }

    /// A fake home where `acme` (1 control plane, `workers` workers) is up.
    async fn with_lab(workers: u32) -> Fake {
        let fake = Fake::new();
        fake.backend(&[])
            .converge(&spec(workers), &OpControl::with_timeout(Duration::from_secs(60)))
            .await
            .unwrap();
        fake
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("home/instances").join(name)
    }
}

fn spec(workers: u32) -> LabSpec {
    vagrant_spec(
        "acme",
        "192.168.56.0/24",
        "10.78.1.0/24",
        1,
        workers,
        test_options("bento/ubuntu-24.04", false),
    )
}

/// A process is alive: it exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(String::from));
            !matches!(state.as_deref(), Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

fn assert_group_dead(fake: &Fake) {
    let hung = fake.hung_processes();
    assert!(!hung.is_empty(), "the fake did not record its processes");
    for (pid, pgid) in hung {
        assert!(!alive(pid), "grandchild {pid} survived");
        assert!(
            !homelab::backend::vagrant::runner::group_alive(pgid),
            "process group {pgid} still has live processes"
        );
    }
}

#[tokio::test]
async fn stand_in_vagrant_up_output_is_streamed_line_by_line_at_info() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let fake = Fake::new();
    let backend = fake.backend(&[("FAKE_VAGRANT_MODE", "slow")]);
    let status = backend
        .converge(&spec(0), &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(status.healthy(), "{status:?}");
    let events = capture.0.lock().unwrap().clone();
    let find = |m: &str| {
        events
            .iter()
            .find(|e| e.message == m)
            .unwrap_or_else(|| panic!("no log event {m:?} in {events:#?}"))
            .clone()
    };
    let (first, second) = (find("first"), find("second"));
    assert_eq!(first.level, tracing::Level::INFO);
    // "first" reached the log while vagrant was still running: "second" came a second later.
    assert!(
        second.at.duration_since(first.at) >= Duration::from_millis(800),
        "lines were not streamed as they came: {:?}",
        second.at.duration_since(first.at)
    );
}

#[tokio::test]
async fn stand_in_vagrant_timeout_stops_the_whole_process_group() {
    let fake = Fake::new();
    // The leader ignores SIGINT (as a busy vagrant may), the grandchild too (background jobs of
    // a script do): SIGTERM has to finish them.
    let backend = fake.backend(&[
        ("FAKE_VAGRANT_MODE", "hang"),
        ("FAKE_VAGRANT_IGNORE", "INT"),
    ]);
    let t = Instant::now();
    let err = backend
        .converge(&spec(0), &OpControl::with_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err();
    match &err {
        BackendError::Timeout { timeout, running } => {
            assert_eq!(*timeout, Duration::from_secs(3));
            assert!(running.contains("up --provider virtualbox"), "{running}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("timed out after 3s"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert_group_dead(&fake);
}

#[tokio::test]
async fn stand_in_vagrant_ignoring_int_and_term_is_killed() {
    let fake = Fake::new();
    let backend = fake.backend(&[
        ("FAKE_VAGRANT_MODE", "hang"),
        ("FAKE_VAGRANT_IGNORE", "INT TERM"),
    ]);
    let t = Instant::now();
    let err = backend
        .converge(&spec(0), &OpControl::with_timeout(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
    // Both grace periods were waited for before SIGKILL.
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert_group_dead(&fake);
}

#[tokio::test]
async fn stand_in_vagrant_cancel_from_terraform_stops_up() {
    let fake = Fake::new();
    let backend = fake.backend(&[("FAKE_VAGRANT_MODE", "hang")]);
    let ctl = OpControl::with_timeout(Duration::from_secs(120));
    let cancel = ctl.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cancel.cancel();
    });
    let t = Instant::now();
    let err = backend.converge(&spec(0), &ctl).await.unwrap_err();
    match &err {
        BackendError::Cancelled { running } => assert!(running.contains("up"), "{running}"),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert!(
        err.to_string().contains("interrupted by Terraform"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_group_dead(&fake);
}

#[tokio::test]
async fn stand_in_vagrant_failed_up_reports_command_exit_code_and_last_lines() {
    let fake = Fake::new();
    let backend = fake.backend(&[("FAKE_VAGRANT_MODE", "fail")]);
    let err = backend
        .converge(&spec(1), &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap_err();
    let BackendError::ToolFailed { cmd, status, tail } = &err else {
        panic!("expected ToolFailed, got {err:?}");
    };
    assert!(
        cmd.contains("fake-vagrant up --provider virtualbox --no-parallel acme-cp-1 acme-worker-1"),
        "{cmd}"
    );
    assert_eq!(status, "exit code 3");
    assert!(tail.contains("up output line 50"), "{tail}");
    assert!(tail.contains("An error occurred"), "{tail}");
    assert!(
        !tail.contains("up output line 20\n"),
        "the tail is not only the last lines: {tail}"
    );
    // The lab is left so that teardown cleans it up.
    assert!(fake.instance_dir("acme").join("Vagrantfile").is_file());
    backend
        .teardown(&spec(1), &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(!fake.instance_dir("acme").exists());
    assert!(
        fake.invocations().iter().any(|l| l == "destroy -f"),
        "{:?}",
        fake.invocations()
    );
}

#[tokio::test]
async fn stand_in_vagrant_converge_brings_up_only_machines_not_running() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    backend.converge(&spec(1), &ctl).await.unwrap();
    let dir = fake.instance_dir("acme");
    // Halt the worker behind the backend's back.
    let out = std::process::Command::new(fake_vagrant())
        .args(["halt", "acme-worker-1"])
        .env("VAGRANT_CWD", &dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let seen = backend.observe(&spec(1)).await.unwrap();
    assert_eq!(seen.nodes[1].state, "shutoff");
    assert!(!seen.nodes[1].healthy && seen.nodes[0].healthy);
    assert_eq!(seen.summary(), "shutoff");

    let before = fake.invocations().len();
    let status = backend.converge(&spec(1), &ctl).await.unwrap();
    assert!(status.healthy(), "{status:?}");
    let ups: Vec<String> = fake.invocations()[before..]
        .iter()
        .filter(|l| l.starts_with("up "))
        .cloned()
        .collect();
    assert_eq!(
        ups,
        vec!["up --provider virtualbox --no-parallel acme-worker-1".to_string()]
    );

    // Everything running: converge runs no `up` at all.
    let before = fake.invocations().len();
    backend.converge(&spec(1), &ctl).await.unwrap();
    assert!(
        !fake.invocations()[before..]
            .iter()
            .any(|l| l.starts_with("up")),
        "{:?}",
        fake.invocations()
    );
}

#[tokio::test]
async fn stand_in_vagrant_scale_down_destroys_removed_machines_with_their_old_definitions() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    backend.converge(&spec(2), &ctl).await.unwrap();
    let dir = fake.instance_dir("acme");
    assert!(dir
        .join(".vagrant/machines/acme-worker-2/virtualbox/id")
        .is_file());

    let status = backend.converge(&spec(1), &ctl).await.unwrap();
    assert!(status.healthy(), "{status:?}");
    assert!(
        fake.invocations()
            .iter()
            .any(|l| l == "destroy -f acme-worker-2"),
        "{:?}",
        fake.invocations()
    );
    let vf = std::fs::read_to_string(dir.join("Vagrantfile")).unwrap();
    assert!(
        !vf.contains("acme-worker-2") && vf.contains("acme-worker-1"),
        "{vf}"
    );
    assert!(!dir.join(".vagrant/machines/acme-worker-2").exists());
}

#[tokio::test]
async fn stand_in_vagrant_observe_reports_missing_and_extra_machines() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    backend
        .converge(&spec(1), &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let dir = fake.instance_dir("acme");
    // The worker vanished (destroyed out of band), and a machine the spec does not list exists.
    let out = std::process::Command::new(fake_vagrant())
        .args(["destroy", "-f", "acme-worker-1"])
        .env("VAGRANT_CWD", &dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::create_dir_all(dir.join(".vagrant/machines/acme-worker-5/virtualbox")).unwrap();
    std::fs::write(
        dir.join(".vagrant/machines/acme-worker-5/virtualbox/id"),
        "x",
    )
    .unwrap();
    let seen = backend.observe(&spec(1)).await.unwrap();
    assert!(seen.exists);
    assert_eq!(seen.nodes[1].state, "not_created");
    assert!(!seen.nodes[1].healthy);
    assert_eq!(seen.extra_nodes, vec!["acme-worker-5".to_string()]);
    assert!(!seen.healthy());
}

#[tokio::test]
async fn stand_in_vagrant_reads_of_one_instance_at_once_do_not_lock_each_other_out() {
    // Terraform refreshes an instance (`vagrant status`) and its federation (`vagrant ssh` on
    // each node) at the same time. The stand-in locks machines as Vagrant does and holds them
    // 0.3 s: no command may meet a machine another command of this process holds.
    let fake = Fake::with_lab(1).await;
    let backend = fake.backend(&[("FAKE_VAGRANT_LOCKS", "1"), ("FAKE_VAGRANT_HOLD", "0.3")]);
    let s = spec(1);
    for _ in 0..3 {
        let (seen, routes, again) = tokio::join!(
            backend.observe(&s),
            backend.guest_routes(&s),
            backend.observe(&s)
        );
        assert!(seen.unwrap().healthy());
        assert!(again.unwrap().healthy());
        assert_eq!(routes.unwrap(), vec![]);
    }
    let locked: Vec<String> = fake.invocations().into_iter().filter(|l| l.starts_with("LOCKED")).collect();
    assert!(locked.is_empty(), "commands of one process met each other's machine locks: {locked:?}");
    assert_eq!(
        fake.invocations().iter().filter(|l| l.starts_with("ssh ")).count(),
        6,
        "{:?}",
        fake.invocations()
    );
}

#[tokio::test]
async fn stand_in_vagrant_machine_locked_by_another_process_is_retried_until_the_deadline() {
    let fake = Fake::with_lab(1).await;
    // Another Vagrant process holds the machines for the first two commands: retried.
    let seen = fake
        .backend(&[("FAKE_VAGRANT_LOCKED", "2")])
        .observe(&spec(1))
        .await
        .unwrap();
    assert!(seen.healthy(), "{seen:?}");
    let locked = fake.invocations().iter().filter(|l| l.starts_with("LOCKED status")).count();
    assert_eq!(locked, 2, "{:?}", fake.invocations());

    // Held for good: the operation's deadline ends the retries, and the error says why.
    std::fs::remove_file(fake.instance_dir("acme").join(".fake-locked-count")).unwrap();
    let t0 = Instant::now();
    let err = fake
        .backend(&[("FAKE_VAGRANT_LOCKED", "1000")])
        .converge(&spec(1), &OpControl::with_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err()
        .to_string();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(err.contains("MachineLocked"), "{err}");
    assert!(err.contains("vagrant status"), "{err}");
}

#[tokio::test]
async fn observe_without_an_instance_folder_is_absent_without_running_vagrant() {
    let fake = Fake::new();
    let seen = fake.backend(&[]).observe(&spec(1)).await.unwrap();
    assert!(!seen.exists);
    assert_eq!(seen.summary(), "absent");
    assert!(seen.nodes.iter().all(|n| n.state == "not_created"));
    assert!(fake.invocations().is_empty(), "{:?}", fake.invocations());
}

#[tokio::test]
async fn stand_in_vagrant_observe_of_a_destroyed_lab_is_absent() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    backend
        .converge(&spec(0), &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let dir = fake.instance_dir("acme");
    let out = std::process::Command::new(fake_vagrant())
        .args(["destroy", "-f"])
        .env("VAGRANT_CWD", &dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let seen = backend.observe(&spec(0)).await.unwrap();
    assert!(!seen.exists, "{seen:?}");
}

#[test]
fn real_machine_readable_samples_are_parsed() {
    let running = parse_status(&status_sample("status-libvirt-running.txt"));
    assert_eq!(running.machines.len(), 1);
    let m = running.get("acme-cp-1").unwrap();
    assert_eq!(
        (m.state.as_str(), m.provider.as_deref()),
        ("running", Some("libvirt"))
    );
    assert!(m.running() && m.created());

    let off = parse_status(&status_sample("status-libvirt-shutoff.txt"));
    let m = off.get("acme-cp-1").unwrap();
    assert_eq!(m.state, "shutoff");
    assert!(!m.running() && m.created());

    let gone = parse_status(&status_sample("status-libvirt-not-created.txt"));
    assert!(!gone.get("acme-cp-1").unwrap().created());

    let two = parse_status(&status_sample("status-libvirt-two-machines.txt"));
    let states: Vec<(&str, &str)> = two
        .machines
        .iter()
        .map(|m| (m.name.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![("acme-cp-1", "running"), ("acme-worker-1", "not_created")]
    );

    let none = parse_status(&status_sample("status-no-environment.txt"));
    assert!(none.machines.is_empty());
    assert_eq!(none.errors.len(), 1);
    assert_eq!(none.errors[0].0, "Vagrant::Errors::NoEnvironmentError");
    assert!(
        none.errors[0].1.contains("Or,\nget an ID"),
        "{:?}",
        none.errors[0].1
    );
}

#[tokio::test]
async fn preflight_names_a_missing_vagrant_and_an_unreachable_libvirtd() {
    let fake = Fake::new();
    let mut cfg = fake.config(&[]);
    cfg.vagrant_bin = PathBuf::from("/nonexistent/vagrant");
    let err = VagrantBackend::new(cfg).preflight().await.unwrap_err();
    let BackendError::Unavailable { what, fix } = &err else {
        panic!("{err:?}");
    };
    assert!(what.contains("/nonexistent/vagrant"), "{what}");
    assert!(fix.contains("apt-get install vagrant"), "{fix}");

    let mut cfg = fake.config(&[]);
    cfg.hypervisor = Hypervisor::Libvirt;
    cfg.libvirt_driver = LibvirtDriver::Qemu;
    cfg.libvirt_uri = format!(
        "qemu:///system?socket={}/no-such-sock",
        fake.dir.path().display()
    );
    crate::util::vagrant::ensure_vm_packages(); // virsh itself must exist for this case
    let err = VagrantBackend::new(cfg).preflight().await.unwrap_err();
    let BackendError::Unavailable { what, fix } = &err else {
        panic!("{err:?}");
    };
    assert!(what.contains("virsh cannot reach libvirtd"), "{what}");
    assert!(fix.contains("libvirtd"), "{fix}");
}

/// The fake vagrant with VirtualBox absent: VirtualBox is named. On a machine with VirtualBox
/// this cannot be checked: scripts/test.sh leaves the test out there (and says so), and run
/// by hand it fails rather than pass without checking.
#[tokio::test]
async fn preflight_names_a_missing_virtualbox() {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("VBoxManage").exists()))
        .unwrap_or(false);
    assert!(!on_path, "VirtualBox is installed here: its absence cannot be tested (scripts/test.sh skips this test on such machines)");
    let fake = Fake::new();
    let err = fake.backend(&[]).preflight().await;
    let Err(BackendError::Unavailable { what, fix }) = err else {
        panic!("{err:?}");
    };
    assert!(what.contains("VirtualBox is not installed"), "{what}");
    assert!(fix.contains("hypervisor = \"libvirt\""), "{fix}");
}

#[tokio::test]
async fn stand_in_vagrant_guest_routes_are_read_and_set_idempotently() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    let spec = spec(1);
    backend.converge(&spec, &ctl).await.unwrap();
    let dir = fake.instance_dir("acme");
    std::fs::write(
        dir.join(".fake-routes-acme-cp-1"),
        r#"[{"dst":"192.168.56.0/24","dev":"eth1"},{"dst":"192.168.57.0/24","gateway":"192.168.56.1","dev":"eth1"},{"dst":"default","gateway":"10.0.2.2"}]"#,
    )
    .unwrap();
    let routes = backend.guest_routes(&spec).await.unwrap();
    assert_eq!(
        routes,
        vec![("acme-cp-1".to_string(), "192.168.57.0/24".parse().unwrap())]
    );

    let dest = "192.168.57.0/24".parse().unwrap();
    backend
        .set_guest_route(&spec, dest, true, &ctl)
        .await
        .unwrap();
    let routes = backend.guest_routes(&spec).await.unwrap();
    assert_eq!(
        routes,
        vec![("acme-cp-1".to_string(), dest), ("acme-worker-1".to_string(), dest)]
    );
    backend
        .set_guest_route(&spec, dest, false, &ctl)
        .await
        .unwrap();
    assert_eq!(backend.guest_routes(&spec).await.unwrap(), vec![]);
    // Removing a route that is not there ("No such process") is success.
    backend
        .set_guest_route(&spec, dest, false, &ctl)
        .await
        .unwrap();
    let ssh = std::fs::read_to_string(dir.join(".fake-ssh")).unwrap();
    for node in ["acme-cp-1", "acme-worker-1"] {
        assert!(
            ssh.contains(&format!(
                "ssh {node}: sudo ip route replace 192.168.57.0/24 via 192.168.56.1"
            )),
            "{ssh}"
        );
        assert!(
            ssh.contains(&format!(
                "ssh {node}: sudo ip route del 192.168.57.0/24 via 192.168.56.1"
            )),
            "{ssh}"
        );
    }
}

#[tokio::test]
async fn stand_in_vagrant_provisioning_joins_nodes_with_checked_values_and_fetches_kubeconfig() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    let mut s = vagrant_spec(
        "acme",
        "192.168.56.0/24",
        "10.78.1.0/24",
        2,
        1,
        test_options("bento/ubuntu-24.04", true),
    );
    s.vagrant.as_mut().unwrap().provision = true;
    backend
        .converge(&s, &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let dir = fake.instance_dir("acme");
    assert_eq!(
        backend.vagrantfile_path("acme").unwrap(),
        dir.join("Vagrantfile")
    );
    assert!(
        dir.join("scripts/node.sh").is_file() && dir.join("scripts/control-plane.sh").is_file()
    );
    let ssh = std::fs::read_to_string(dir.join(".fake-ssh")).unwrap();
    let hash = format!("sha256:{:064}", 7);
    let key = format!("{:064}", 9);
    assert!(ssh.contains(&format!(
        "ssh acme-cp-2: sudo kubeadm join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {hash} --node-name acme-cp-2 --control-plane --certificate-key {key} --apiserver-advertise-address 192.168.56.11"
    )), "{ssh}");
    assert!(ssh.contains(&format!(
        "ssh acme-worker-1: sudo kubeadm join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {hash} --node-name acme-worker-1\n"
    )), "{ssh}");
    assert!(!ssh.contains("ssh acme-cp-1: sudo kubeadm join"), "{ssh}");
    use std::os::unix::fs::PermissionsExt;
    let kc = backend.kubeconfig_path("acme").unwrap();
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&kc)
        .unwrap()
        .contains("server: https://192.168.56.10:6443"));
    // Two control planes: the endpoint is their virtual IP (the stand-in prints cp-1's).
    assert_eq!(
        VagrantBackend::api_endpoint(&s).as_deref(),
        Some("https://192.168.56.5:6443")
    );
    assert!(dir.join("scripts/keepalived.sh").is_file());

    // A second converge joins nobody again.
    let before = ssh.matches("kubeadm join").count();
    backend
        .converge(&s, &OpControl::with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let ssh = std::fs::read_to_string(dir.join(".fake-ssh")).unwrap();
    assert_eq!(ssh.matches("kubeadm join").count(), before);
    assert!(backend.instance_dir("../etc").is_err());
}

#[tokio::test]
async fn stand_in_vagrant_machine_that_failed_to_come_up_is_reported_and_rebuilt_by_the_next_converge() {
    let fake = Fake::new();
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    // A bring-up that fails (a guest that never boots, a timeout).
    fake.backend(&[("FAKE_VAGRANT_MODE", "fail")]).converge(&spec(1), &ctl).await.unwrap_err();
    // Its domains may well be running anyway (on a broken disk): reads say what happened.
    let dir = fake.instance_dir("acme");
    std::fs::write(dir.join(".fake-states"), "acme-cp-1 running\nacme-worker-1 running\n").unwrap();
    let backend = fake.backend(&[]);
    let status = backend.observe(&spec(1)).await.unwrap();
    assert!(!status.healthy(), "{status:?}");
    assert!(status.nodes.iter().all(|n| n.state == "failed_to_come_up"), "{status:?}");
    // The next converge destroys them first, then brings them up; then all is well.
    let before = fake.invocations().len();
    let status = backend.converge(&spec(1), &ctl).await.unwrap();
    assert!(status.healthy(), "{status:?}");
    let calls = fake.invocations()[before..].to_vec();
    let destroy = calls.iter().position(|c| c == "destroy -f acme-cp-1 acme-worker-1");
    let up = calls.iter().position(|c| c.starts_with("up "));
    assert!(destroy.is_some() && up.is_some() && destroy < up, "{calls:?}");
    assert!(!dir.join("failed-up.json").exists());
    assert!(backend.observe(&spec(1)).await.unwrap().healthy());
}

/// Every field of every log event, as text.
#[derive(Clone, Default)]
struct AllFields(Arc<Mutex<String>>);

struct FieldsVisitor<'a>(&'a mut String);

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for AllFields {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut line = String::new();
        event.record(&mut FieldsVisitor(&mut line));
        let mut all = self.0.lock().unwrap();
        all.push_str(&line);
        all.push('\n');
    }
}

#[tokio::test]
async fn stand_in_vagrant_join_secrets_never_reach_the_log_or_the_error() {
    let all = AllFields::default();
    let subscriber = tracing_subscriber::registry().with(all.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let fake = Fake::new();
    let (token, key, client) = ("q7w8e9.r1t2y3u4i5o6p7a8", "f00dfeed".repeat(8), "c2VjcmV0LWNsaWVudC1rZXk=");
    let env = [("FAKE_VAGRANT_TOKEN", token), ("FAKE_VAGRANT_CERT_KEY", key.as_str()), ("FAKE_VAGRANT_CLIENT_KEY", client)];
    let two_cps = |workers| vagrant_spec("acme", "192.168.56.0/24", "10.78.1.0/24", 2, workers, test_options("bento/ubuntu-24.04", true));
    // Joined, credentials fetched: the kubeconfig file holds the client key, mode 0600.
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    fake.backend(&env).converge(&two_cps(1), &ctl).await.unwrap();
    let kubeconfig = fake.dir.path().join("home/instances/acme/kubeconfig");
    assert!(std::fs::read_to_string(&kubeconfig).unwrap().contains(client));
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kubeconfig).unwrap().permissions()) & 0o777, 0o600);
    // A join that fails: the error shows the command, redacted.
    let failing: Vec<(&str, &str)> = env.iter().copied().chain([("FAKE_VAGRANT_JOIN_FAIL", "1")]).collect();
    let err = fake.backend(&failing).converge(&two_cps(2), &ctl).await.unwrap_err().to_string();
    assert!(err.contains("kubeadm join") && err.contains(homelab::process::REDACTED), "{err}");
    let logged = all.0.lock().unwrap().clone();
    assert!(logged.contains("kubeadm join"), "the join was not logged at all:\n{logged}");
    for (what, secret) in [("token", token.split_once('.').unwrap().1), ("certificate key", key.as_str()), ("client key", client)] {
        assert!(!logged.contains(secret), "the {what} is in the log:\n{logged}");
        assert!(!err.contains(secret), "the {what} is in the error: {err}");
    }
}

/// `vagrant status` costs seconds of Vagrant's start-up each time: a fresh lab is brought up
/// without asking it (no machine has a record yet), and a converge asks it once, before `up`,
/// not again after.
#[tokio::test]
async fn stand_in_vagrant_converge_asks_status_only_when_machines_have_records() {
    let fake = Fake::new();
    let backend = fake.backend(&[]);
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    let s = spec(1);
    let status = backend.converge(&s, &ctl).await.unwrap();
    assert!(status.exists && status.nodes.iter().all(|n| n.healthy && n.state == "running"), "{status:?}");
    let calls = fake.invocations();
    assert!(calls.iter().any(|c| c.starts_with("up ")), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("status")), "a fresh lab asked `vagrant status`: {calls:?}");
    // What the converge reported is what Vagrant says.
    assert_eq!(backend.observe(&s).await.unwrap(), status);

    // Again, one node halted: one status (before up), then up of that node only.
    std::fs::write(fake.log.as_path(), "").unwrap();
    let dir = fake.instance_dir("acme");
    let states = std::fs::read_to_string(dir.join(".fake-states")).unwrap().replace("acme-worker-1 running", "acme-worker-1 shutoff");
    std::fs::write(dir.join(".fake-states"), states).unwrap();
    let status = backend.converge(&s, &ctl).await.unwrap();
    assert!(status.nodes.iter().all(|n| n.healthy), "{status:?}");
    let calls = fake.invocations();
    assert_eq!(calls.iter().filter(|c| c.starts_with("status")).count(), 1, "{calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("up ") && c.ends_with("acme-worker-1")), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("up ") && c.contains("acme-cp-1")), "{calls:?}");
    assert_eq!(backend.observe(&s).await.unwrap(), status);
}
