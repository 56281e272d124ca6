//! Scratch self-test of tests/util/etcd_cluster.rs (to be deleted).
#[path = "util/etcd_cluster.rs"]
mod etcd_cluster;

use etcd_cluster::{shared, Cluster, Options, ELECTION_MS};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{:?} should fail", cmd);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn alive(pid: u32) -> bool {
    let out = Command::new("ps")
        .args(["-p", &pid.to_string(), "-o", "pid=,stat=,comm="])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !s.is_empty() {
        eprintln!("ps: {s}");
    }
    !s.is_empty()
}

fn assert_gone(pids: &[u32], dir: &PathBuf) {
    for &p in pids {
        assert!(!alive(p), "etcd pid {p} still there");
    }
    assert!(!dir.exists(), "{} still there", dir.display());
    eprintln!("gone: pids {pids:?}, {}", dir.display());
}

#[test]
fn a_single_member_put_get() {
    let t = Instant::now();
    let c = Cluster::start(Options::default());
    eprintln!("1-member start: {:?}", t.elapsed());
    assert!(c.endpoint(0).starts_with("http://127.0.0.1:"));
    ok(c.etcdctl().args(["put", "k", "v"]));
    let got = ok(c.etcdctl().args(["get", "k", "--print-value-only"]));
    assert_eq!(got.trim(), "v");
    assert_eq!(c.leader(), 0);
    eprintln!("log tail:\n{}", c.log_tail(0).lines().last().unwrap());
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    assert!(alive(pids[0]));
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn b_three_members_kill_leader() {
    let t = Instant::now();
    let c = Cluster::start(Options { members: 3, ..Default::default() });
    eprintln!("3-member start: {:?}", t.elapsed());
    let l = c.leader();
    eprintln!("leader m{l}");
    ok(c.etcdctl().args(["put", "before", "1"]));
    let old_pid = c.pid(l);
    let t = Instant::now();
    c.kill(l);
    assert!(!alive(old_pid));
    let l2 = c.leader();
    eprintln!("new leader m{l2} after {:?}", t.elapsed());
    assert_ne!(l, l2);
    ok(c.etcdctl().args(["put", "after", "2"]));
    let t = Instant::now();
    c.restart(l);
    eprintln!("restart of m{l}: {:?}", t.elapsed());
    c.wait_healthy();
    // linearizable read through the restarted member only
    let got = ok(c
        .etcdctl()
        .arg(format!("--endpoints={}", c.endpoint(l)))
        .args(["get", "after", "--print-value-only"]));
    assert_eq!(got.trim(), "2");
    ok(c.etcdctl().arg(format!("--endpoints={}", c.endpoint(l))).args(["endpoint", "health"]));
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    assert_eq!(pids.len(), 3);
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn c_pause_follower_and_leader() {
    let c = Cluster::start(Options { members: 3, ..Default::default() });
    let l = c.leader();
    let f = (l + 1) % 3;
    c.pause(f);
    std::thread::sleep(Duration::from_millis(3 * ELECTION_MS));
    ok(c.etcdctl().args(["put", "paused", "1"]));
    assert_eq!(c.leader(), l, "leader changed while a follower was paused");
    c.resume(f);
    c.wait_healthy();
    std::thread::sleep(Duration::from_millis(3 * ELECTION_MS));
    assert_eq!(c.leader(), l, "resumed follower deposed the leader");
    ok(c.etcdctl().arg(format!("--endpoints={}", c.endpoint(f))).args(["get", "paused"]));
    // pause the leader: another one is elected; resume: it rejoins
    let t = Instant::now();
    c.pause(l);
    let l2 = c.leader();
    eprintln!("leader m{l} paused -> m{l2} after {:?}", t.elapsed());
    assert_ne!(l2, l);
    ok(c.etcdctl().args(["put", "x", "y"]));
    c.resume(l);
    c.wait_healthy();
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    // drop while one is paused again
    c.pause(l2);
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn d_tls() {
    let t = Instant::now();
    let c = Cluster::start(Options { members: 1, tls: true, auth: false });
    eprintln!("1-member TLS start: {:?}", t.elapsed());
    assert!(c.endpoint(0).starts_with("https://127.0.0.1:"));
    ok(c.etcdctl().args(["put", "k", "tls"]));
    let (cert, key) = c.client_cert().unwrap();
    let ca = c.ca_file().unwrap();
    let other = c.other_ca_file().unwrap();
    // the same by hand
    let by_hand = |cacert: &PathBuf, with_cert: bool| {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", c.endpoint(0)))
            .arg(format!("--cacert={}", cacert.display()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s");
        if with_cert {
            cmd.arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        cmd.args(["put", "k2", "v"]);
        cmd
    };
    ok(&mut by_hand(&ca, true));
    let e = fails(&mut by_hand(&other, true));
    eprintln!("other CA: {}", e.lines().last().unwrap_or(""));
    let e = fails(&mut by_hand(&ca, false));
    eprintln!("no client cert: {}", e.lines().last().unwrap_or(""));
    // etcdctl() with --cacert overridden by the other CA fails too
    fails(c.etcdctl().arg(format!("--cacert={}", other.display())).arg("--dial-timeout=2s").args(["put", "a", "b"]));
    // plain http refused
    fails(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", c.endpoint(0).replace("https", "http")))
            .arg("--dial-timeout=2s")
            .args(["put", "a", "b"]),
    );
    // openssl view of the certs
    let text = ok(Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&cert));
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn e_auth() {
    let t = Instant::now();
    let c = Cluster::start(Options { members: 1, tls: false, auth: true });
    eprintln!("1-member auth start: {:?}", t.elapsed());
    let pw = c.root_password().unwrap();
    assert!(pw.len() >= 16);
    ok(c.etcdctl().args(["put", "k", "v"]));
    let e = fails(c.etcdctl().arg("--user=root:wrong").args(["get", "k"]));
    eprintln!("wrong password: {}", e.lines().last().unwrap_or(""));
    fails(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", c.endpoint(0)))
            .args(["put", "k", "v"]),
    );
    c.add_user("alice", "alicepw", "/alice/");
    ok(c.etcdctl().arg("--user=alice:alicepw").args(["put", "/alice/x", "1"]));
    let got = ok(c.etcdctl().arg("--user=alice:alicepw").args(["get", "/alice/x", "--print-value-only"]));
    assert_eq!(got.trim(), "1");
    let e = fails(c.etcdctl().arg("--user=alice:alicepw").args(["put", "/bob/x", "1"]));
    assert!(e.contains("permission denied"), "{e}");
    eprintln!("outside prefix: {}", e.lines().last().unwrap_or(""));
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn f_tls_auth_three() {
    let t = Instant::now();
    let c = Cluster::start(Options { members: 3, tls: true, auth: true });
    eprintln!("3-member TLS+auth start: {:?}", t.elapsed());
    ok(c.etcdctl().args(["put", "k", "v"]));
    let l = c.leader();
    c.kill(l);
    assert_ne!(c.leader(), l);
    ok(c.etcdctl().args(["put", "k", "v2"]));
    c.restart(l);
    c.wait_healthy();
    c.add_user("bob", "bobpw", "/bob/");
    ok(c.etcdctl().arg("--user=bob:bobpw").args(["put", "/bob/x", "1"]));
    fails(c.etcdctl().arg("--user=bob:bobpw").args(["put", "/alice/x", "1"]));
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn g_panic_cleans_up() {
    let info = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let c = Cluster::start(Options { members: 2, ..Default::default() });
        *info.lock().unwrap() = Some((c.pids(), c.dir().to_path_buf()));
        panic!("test panics while owning the cluster");
    }));
    assert!(r.is_err());
    let (pids, dir) = info.lock().unwrap().take().unwrap();
    assert_eq!(pids.len(), 2);
    assert_gone(&pids, &dir);
}

#[test]
fn h_survives_its_starting_thread() {
    // started in a thread that ends: PDEATHSIG must not fire (the spawner thread forked it)
    let c = std::thread::spawn(|| Cluster::start(Options::default())).join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = c.pid(0);
    assert!(alive(pid));
    ok(c.etcdctl().args(["put", "k", "v"]));
    c.kill(0);
    assert!(!alive(pid));
    c.restart(0);
    let pid2 = c.pid(0);
    let got = ok(c.etcdctl().args(["get", "k", "--print-value-only"]));
    assert_eq!(got.trim(), "v");
    let dir = c.dir().to_path_buf();
    std::thread::spawn(move || drop(c)).join().unwrap();
    assert_gone(&[pid, pid2], &dir);
}

#[test]
fn i_shared() {
    let t = Instant::now();
    let a = shared();
    eprintln!("shared start: {:?}", t.elapsed());
    let b = std::thread::spawn(|| shared() as *const Cluster as usize).join().unwrap();
    assert_eq!(a as *const Cluster as usize, b);
    ok(a.etcdctl().args(["put", "shared", "1"]));
    let dir = a.dir().to_path_buf();
    assert!(dir.ends_with(format!("homelab-etcd-shared-{}", std::process::id())));
    // report for the outer check
    std::fs::write("/tmp/etcd-selftest-shared", format!("{} {}\n", a.pid(0), dir.display())).unwrap();
    eprintln!("shared pid {} dir {}", a.pid(0), dir.display());
}

/// Run alone: makes this process hold the shared cluster, then dies by SIGKILL.
#[test]
#[ignore]
fn z_shared_then_sigkill() {
    let a = shared();
    std::fs::write("/tmp/etcd-selftest-shared-killed", format!("{} {}\n", a.pid(0), a.dir().display())).unwrap();
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

fn panic_text(r: std::thread::Result<()>) -> String {
    let e = r.expect_err("should panic");
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap()
}

#[test]
fn j_restart_port_taken_and_no_quorum() {
    let c = Cluster::start(Options { members: 3, ..Default::default() });
    let port: u16 = c.endpoint(2).rsplit(':').next().unwrap().parse().unwrap();
    c.kill(2);
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let msg = panic_text(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.restart(2))));
    eprintln!("restart panic (first 300 chars): {}", &msg[..300.min(msg.len())]);
    assert!(msg.contains("address already in use"), "{msg}");
    assert!(msg.contains("log tail of m2"));
    drop(squatter);
    c.kill(1);
    let t = Instant::now();
    let msg = panic_text(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.wait_healthy())));
    eprintln!("no quorum: panicked after {:?}: {}", t.elapsed(), msg.lines().next().unwrap());
    assert!(msg.contains("log tail of m0"));
    let (pids, dir) = (c.pids(), c.dir().to_path_buf());
    drop(c);
    assert_gone(&pids, &dir);
}

#[test]
fn y_fail_if_env() {
    if std::env::var("SELFTEST_FAIL").is_ok() {
        let a = shared();
        std::fs::write("/tmp/etcd-selftest-shared-failed", format!("{} {}\n", a.pid(0), a.dir().display())).unwrap();
        panic!("deliberate failure");
    }
}
