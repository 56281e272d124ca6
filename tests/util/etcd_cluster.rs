//! Real etcd clusters for tests: Debian's etcd 3.4 (`/usr/bin/etcd`, `/usr/bin/etcdctl`) started
//! on loopback, one to three members, optionally with TLS (certificates made with the `openssl`
//! CLI) and with authentication (a root user), plus faults: kill, restart, pause (SIGSTOP) and
//! resume a member, and find the leader.
//!
//! - [`Cluster::start`] starts a cluster owned by the test: dropping it (also when the test
//!   panics) SIGKILLs every member by its PID, reaps it and removes the cluster's temp folder
//!   (data directories, logs, TLS material).
//! - [`shared`] is one single-member cluster shared by every test of the process, for tests that
//!   only need "an etcd" and can keep out of each other's way (own key prefixes).
//!
//! Network: every member listens on 127.0.0.1 only, on ports found free by binding
//! `127.0.0.1:0` (retried with new ports when etcd then fails to bind one). Nothing else is
//! contacted.
//!
//! Lifetime: every etcd process is forked by one process-wide "spawner" thread that never ends,
//! and gets `prctl(PR_SET_PDEATHSIG, SIGKILL)` before `exec`. The death signal fires when the
//! *thread* that forked the child exits, not the process: forking from a test's own thread would
//! kill its etcd when that thread ends, even while the cluster is still owned by a longer-lived
//! object (a static, another thread). The spawner thread lives as long as the process, so the
//! members die exactly when the test process dies, however it dies (SIGKILL, abort, Ctrl-C):
//! no etcd outlives a test binary. A folder the shared cluster leaves behind when its process
//! is killed is removed by the next process that starts one.
//!
//! Speed: raft timings suited to loopback ([`HEARTBEAT_MS`], [`ELECTION_MS`]), pre-vote (a
//! resumed member does not depose a healthy leader), cheap bcrypt ([`BCRYPT_COST`]) and
//! `--unsafe-no-fsync` when this etcd accepts it (3.4.23 does, though `etcd --help` does not
//! list it: probed once per process with `etcd --unsafe-no-fsync --version`).
//!
//! Only `std`, `libc` and `tempfile` are used: this file is included with
//! `#[path = ...] mod etcd_cluster;` both by the integration tests and by the library's unit
//! tests.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The etcd server binary (Debian's etcd-server package).
pub const ETCD: &str = "/usr/bin/etcd";
/// The etcd client binary (Debian's etcd-client package).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Raft heartbeat interval, in milliseconds (etcd's default is 100). Loopback round trips are
/// well under a millisecond.
pub const HEARTBEAT_MS: u64 = 50;
/// Raft election timeout, in milliseconds (etcd's default is 1000): a killed or paused leader is
/// replaced after 0.5 to 1 s (raft randomizes the timeout between 1 and 2 times this).
pub const ELECTION_MS: u64 = 500;
/// bcrypt cost of etcd's password hashes (etcd's default is 10, the minimum 4): every etcdctl
/// call with `--user` authenticates, and must not cost a tenth of a second of CPU.
pub const BCRYPT_COST: u32 = 4;
/// How long a start, a restart or [`Cluster::wait_healthy`] waits for health before panicking.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Cluster::leader`] retries before panicking.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many lines [`Cluster::log_tail`] returns.
pub const LOG_TAIL_LINES: usize = 40;
/// How many times a start picks new ports when etcd could not bind the ones found free.
const PORT_ATTEMPTS: usize = 5;
/// The prefix of the shared cluster's folder in the temp dir (followed by the owning pid).
const SHARED_PREFIX: &str = "homelab-etcd-shared-";

/// What cluster to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How many members (names `m0`, `m1`, ...).
    pub members: usize,
    /// Clients and peers speak TLS with client certificates ([`Cluster::ca_file`],
    /// [`Cluster::client_cert`]).
    pub tls: bool,
    /// Authentication enabled, with a root user ([`Cluster::root_password`]).
    pub auth: bool,
}

impl Default for Options {
    /// One member, plain HTTP, no authentication.
    fn default() -> Self {
        Options {
            members: 1,
            tls: false,
            auth: false,
        }
    }
}

/// The certificates of a TLS cluster (PEM files in the cluster's folder).
#[derive(Clone, Debug)]
struct Tls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

/// One member: its fixed identity (name, ports, data dir) and its process when running.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    fn live(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// SIGKILL by PID (also when stopped) and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

/// Why a member is not healthy (yet).
enum Unhealthy {
    /// Running, not serving yet.
    NotYet,
    /// Not running: its process ended (reaped), or was never started.
    Exited { why: String, port_in_use: bool },
}

/// A running etcd cluster on loopback. Dropping it stops every member (SIGKILL by PID) and
/// removes its folder.
pub struct Cluster {
    /// The folder of data dirs, logs and TLS material.
    root: PathBuf,
    /// Owns `root` for clusters of [`Cluster::start`] (None for the shared cluster, whose folder
    /// has a fixed name).
    tmp: Option<tempfile::TempDir>,
    tls: Option<Tls>,
    token: String,
    root_password: Option<String>,
    members: Mutex<Vec<Member>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.root)
            .field("endpoints", &self.endpoints())
            .field("tls", &self.tls.is_some())
            .field("auth", &self.root_password.is_some())
            .finish()
    }
}

impl Cluster {
    /// Starts a cluster in a new temp folder and waits until every member is healthy and a
    /// leader is elected (then, with `auth`, creates the root user and enables authentication).
    /// Panics, with the members' log tails, when that takes longer than [`START_TIMEOUT`].
    pub fn start(opts: Options) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("homelab-etcd-")
            .tempdir()
            .expect("create the etcd cluster's temp folder");
        let root = tmp.path().to_path_buf();
        Cluster::start_in(root, Some(tmp), opts)
    }

    fn start_in(root: PathBuf, tmp: Option<tempfile::TempDir>, opts: Options) -> Cluster {
        assert!(
            opts.members >= 1,
            "an etcd cluster needs at least one member"
        );
        let tls = opts.tls.then(|| make_tls(&root.join("tls")));
        // Built before anything runs, so that a panic below drops it: members killed, folder gone.
        let mut cluster = Cluster {
            root,
            tmp,
            tls,
            token: String::new(),
            root_password: None,
            members: Mutex::new(Vec::new()),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.token = format!("homelab-test-{}-{}", std::process::id(), random_alnum(12));
            let ports = free_ports(2 * opts.members);
            let members: Vec<Member> = (0..opts.members)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    data_dir: cluster.root.join(format!("m{i}.etcd")),
                    log: cluster.root.join(format!("m{i}.log")),
                    child: None,
                    paused: false,
                })
                .collect();
            for m in &members {
                let _ = fs::remove_dir_all(&m.data_dir);
                let _ = fs::remove_file(&m.log);
            }
            *cluster.lock() = members;
            for i in 0..opts.members {
                cluster.spawn_member(i, "new");
            }
            match cluster.wait_until_healthy(Instant::now() + START_TIMEOUT) {
                Ok(()) => break,
                Err((_, true)) if attempt < PORT_ATTEMPTS => {
                    // A port found free was taken before etcd bound it: start over, new ports.
                    for m in cluster.lock().iter_mut() {
                        m.kill();
                    }
                }
                Err((msg, _)) => panic!("etcd cluster did not start: {msg}"),
            }
        }
        if opts.auth {
            let password = random_alnum(24);
            cluster.ctl_ok(&[
                "user",
                "add",
                "root",
                &format!("--new-user-password={password}"),
            ]);
            // etcdctl 3.4 creates the root role and grants it to root when auth enable asks.
            cluster.ctl_ok(&["auth", "enable"]);
            cluster.root_password = Some(password);
            if let Err((msg, _)) = cluster.wait_until_healthy(Instant::now() + START_TIMEOUT) {
                panic!("etcd cluster unhealthy after enabling auth: {msg}");
            }
        }
        cluster
    }

    /// The client URLs (`http://127.0.0.1:PORT`, or `https://` with TLS), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.lock()
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.endpoints()
            .into_iter()
            .nth(i)
            .unwrap_or_else(|| panic!("no etcd member {i}"))
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// SIGKILLs member `i` by its PID and reaps it (nothing when it is not running).
    pub fn kill(&self, i: usize) {
        self.member(i, |m| m.kill());
    }

    /// Starts member `i` again, with the same name, data dir and ports (it rejoins with its
    /// state), and waits until it is healthy. A member still running is killed first.
    /// Panics, with its log tail, when it is not healthy within [`START_TIMEOUT`].
    pub fn restart(&self, i: usize) {
        self.member(i, |m| m.kill());
        self.spawn_member(i, "existing");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.check_member(i, true) {
                Ok(()) => return,
                Err(Unhealthy::Exited { why, .. }) => {
                    panic!(
                        "etcd member m{i} did not restart: {why}\n{}",
                        self.tail_block(i)
                    )
                }
                Err(Unhealthy::NotYet) if Instant::now() >= deadline => panic!(
                    "etcd member m{i} not healthy {START_TIMEOUT:?} after its restart\n{}",
                    self.tail_block(i)
                ),
                Err(Unhealthy::NotYet) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops member `i` with SIGSTOP (it keeps its sockets but answers nothing).
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.member(i, |m| m.paused = true);
    }

    /// Lets member `i`, paused, go on (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.member(i, |m| m.paused = false);
    }

    /// The index of the current leader, as the live members (running, not paused) see it: the
    /// one that reports itself leader in the highest raft term (`etcdctl endpoint status -w
    /// json`). Retries for [`LEADER_TIMEOUT`] (an election takes up to 2 × [`ELECTION_MS`]),
    /// then panics.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            if let Some(i) = self.leader_once() {
                return i;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no etcd leader among the live members after {LEADER_TIMEOUT:?}\n{}",
                    self.all_tails()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live member (running, not paused) is healthy (commits a read through
    /// raft: `etcdctl endpoint health`) and a leader exists. Panics, with the log tails, after
    /// [`START_TIMEOUT`] or when a member's process has ended without [`Cluster::kill`].
    pub fn wait_healthy(&self) {
        if let Err((msg, _)) = self.wait_until_healthy(Instant::now() + START_TIMEOUT) {
            panic!("etcd cluster not healthy: {msg}");
        }
    }

    /// The PID of member `i` (panics when it is not running).
    pub fn pid(&self, i: usize) -> u32 {
        self.member(i, |m| m.child.as_ref().map(Child::id))
            .unwrap_or_else(|| panic!("etcd member m{i} is not running"))
    }

    /// The PIDs of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// The last [`LOG_TAIL_LINES`] lines of member `i`'s log (etcd's stdout and stderr, kept
    /// across restarts).
    pub fn log_tail(&self, i: usize) -> String {
        let log = self.member(i, |m| m.log.clone());
        tail(&log, LOG_TAIL_LINES)
    }

    /// The folder of the cluster's data dirs, logs and TLS material (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `etcdctl` speaking v3 to all members (`--endpoints`), with the CA and client certificate
    /// when TLS is on and `--user root:<password>` when auth is on. Another `--user` (or any
    /// flag) added by the caller wins, as the last of a repeated flag does. `ETCDCTL_*`
    /// variables of the environment are removed (etcdctl refuses a flag that a variable also
    /// sets).
    pub fn etcdctl(&self) -> Command {
        self.ctl(&self.endpoints())
    }

    /// The CA that signed the members' and the client's certificates (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca.clone())
    }

    /// A client certificate and its key, `(cert, key)`, signed by [`Cluster::ca_file`]
    /// (`CN=homelab-client`, extendedKeyUsage clientAuth): accepted by the members (TLS only).
    pub fn client_cert(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls
            .as_ref()
            .map(|t| (t.client_cert.clone(), t.client_key.clone()))
    }

    /// Another CA, unrelated to the cluster's: verifying the members with it fails (TLS only).
    pub fn other_ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.other_ca.clone())
    }

    /// The root user's password (auth only).
    pub fn root_password(&self) -> Option<String> {
        self.root_password.clone()
    }

    /// Creates `user` with `password` and a role `<user>-role` granted readwrite on the keys
    /// starting with `prefix` (auth only). Panics when etcdctl fails.
    pub fn add_user(&self, user: &str, password: &str, prefix: &str) {
        assert!(
            self.root_password.is_some(),
            "add_user needs a cluster started with auth"
        );
        let role = format!("{user}-role");
        self.ctl_ok(&["role", "add", &role]);
        self.ctl_ok(&[
            "role",
            "grant-permission",
            "--prefix=true",
            &role,
            "readwrite",
            prefix,
        ]);
        self.ctl_ok(&[
            "user",
            "add",
            user,
            &format!("--new-user-password={password}"),
        ]);
        self.ctl_ok(&["user", "grant-role", user, &role]);
    }

    // --- internals ---

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The members, also after a panic while they were locked.
    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn member<T>(&self, i: usize, f: impl FnOnce(&mut Member) -> T) -> T {
        let mut members = self.lock();
        let n = members.len();
        let m = members
            .get_mut(i)
            .unwrap_or_else(|| panic!("no etcd member {i} (the cluster has {n})"));
        f(m)
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let pid = self.pid(i);
        // SAFETY: kill(2) on the PID of our own child, not reaped yet (we hold its Child).
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            panic!(
                "signal {sig} to etcd member m{i} (pid {pid}): {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Forks member `i` (from the spawner thread), logging to its log file (appended).
    fn spawn_member(&self, i: usize, state: &str) {
        let scheme = self.scheme();
        let mut members = self.lock();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &mut members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("{scheme}://127.0.0.1:{}", m.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", m.log.display()));
        let mut cmd = Command::new(ETCD);
        remove_env_prefix(&mut cmd, "ETCD_");
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
            .arg(format!("--election-timeout={ELECTION_MS}"))
            .arg("--pre-vote=true")
            .arg(format!("--bcrypt-cost={BCRYPT_COST}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if no_fsync_supported() {
            cmd.arg("--unsafe-no-fsync");
        }
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
                ("--trusted-ca-file", &t.ca),
                ("--peer-cert-file", &t.server_cert),
                ("--peer-key-file", &t.server_key),
                ("--peer-trusted-ca-file", &t.ca),
            ] {
                cmd.arg(format!("{flag}={}", path.display()));
            }
            cmd.arg("--client-cert-auth").arg("--peer-client-cert-auth");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the etcd log file"))
            .stderr(log);
        let child =
            spawn_daemon(cmd).unwrap_or_else(|e| panic!("start {ETCD} (member {}): {e}", m.name));
        m.child = Some(child);
        m.paused = false;
    }

    /// Waits until every live member is healthy and a leader exists. On failure: the message
    /// (with log tails) and whether a member failed to bind its port.
    ///
    /// In three steps, so that no health read is sent before there is a leader (etcd would
    /// hold it for ReadIndex retries of 500 ms and more): every live member's process runs and
    /// its client port accepts connections; a leader exists; every live member is healthy.
    fn wait_until_healthy(&self, deadline: Instant) -> Result<(), (String, bool)> {
        let live: Vec<usize> = {
            let members = self.lock();
            (0..members.len()).filter(|&i| members[i].live()).collect()
        };
        for health in [false, true] {
            for &i in &live {
                loop {
                    match self.check_member(i, health) {
                        Ok(()) => break,
                        Err(Unhealthy::Exited { why, port_in_use }) => {
                            return Err((
                                format!("member m{i} {why}\n{}", self.all_tails()),
                                port_in_use,
                            ))
                        }
                        Err(Unhealthy::NotYet) if Instant::now() >= deadline => {
                            let what = if health { "healthy" } else { "serving" };
                            return Err((
                                format!("member m{i} not {what} in time\n{}", self.all_tails()),
                                false,
                            ));
                        }
                        Err(Unhealthy::NotYet) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            if !health {
                while self.leader_once().is_none() {
                    if Instant::now() >= deadline {
                        return Err((format!("no leader in time\n{}", self.all_tails()), false));
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    /// Whether member `i` is running and its client port accepts connections, and, with
    /// `health`, whether `etcdctl endpoint health` commits a read through it.
    fn check_member(&self, i: usize, health: bool) -> Result<(), Unhealthy> {
        let port = self.member(i, |m| {
            let Some(child) = m.child.as_mut() else {
                return Err(Unhealthy::Exited {
                    why: "is not running".into(),
                    port_in_use: false,
                });
            };
            match child.try_wait() {
                Ok(None) => Ok(m.client_port),
                Ok(Some(status)) => {
                    m.child = None;
                    m.paused = false;
                    let log = tail(&m.log, LOG_TAIL_LINES);
                    Err(Unhealthy::Exited {
                        why: format!("exited ({status})"),
                        port_in_use: log.contains("address already in use"),
                    })
                }
                Err(e) => Err(Unhealthy::Exited {
                    why: format!("cannot be waited for: {e}"),
                    port_in_use: false,
                }),
            }
        })?;
        // Cheap first: etcdctl on a closed port would wait for its whole dial timeout.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return Err(Unhealthy::NotYet);
        }
        if !health {
            return Ok(());
        }
        let out = run(self.ctl(&[self.endpoint(i)]).args([
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "endpoint",
            "health",
        ]));
        if out.status.success() {
            Ok(())
        } else {
            Err(Unhealthy::NotYet)
        }
    }

    /// The member that, among the live ones answering, reports itself leader in the highest
    /// term.
    fn leader_once(&self) -> Option<usize> {
        let live: Vec<usize> = {
            let members = self.lock();
            (0..members.len()).filter(|&i| members[i].live()).collect()
        };
        let mut best: Option<(u64, usize)> = None;
        for i in live {
            let out = run(self.ctl(&[self.endpoint(i)]).args([
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "status",
                "-w",
                "json",
            ]));
            if !out.status.success() {
                continue;
            }
            let json = String::from_utf8_lossy(&out.stdout);
            let (Some(id), Some(leader), Some(term)) = (
                json_u64(&json, "member_id"),
                json_u64(&json, "leader"),
                json_u64(&json, "raftTerm"),
            ) else {
                continue;
            };
            if id == leader && leader != 0 && best.is_none_or(|(t, _)| term > t) {
                best = Some((term, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// etcdctl on `endpoints`, with TLS files and root credentials when enabled.
    fn ctl(&self, endpoints: &[String]) -> Command {
        let mut cmd = Command::new(ETCDCTL);
        remove_env_prefix(&mut cmd, "ETCDCTL_");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")));
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        if let Some(pw) = &self.root_password {
            cmd.arg(format!("--user=root:{pw}"));
        }
        cmd
    }

    /// Runs etcdctl with `args` on all members; panics with its output when it fails.
    fn ctl_ok(&self, args: &[&str]) -> Output {
        let out = run(self.etcdctl().args(args));
        if !out.status.success() {
            panic!(
                "etcdctl {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    fn tail_block(&self, i: usize) -> String {
        format!("--- log tail of m{i} ---\n{}", self.log_tail(i))
    }

    fn all_tails(&self) -> String {
        (0..self.len())
            .map(|i| self.tail_block(i))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills every member (by PID) and reaps it.
    fn kill_all(&self) {
        for m in self.lock().iter_mut() {
            m.kill();
        }
    }
}

impl Drop for Cluster {
    /// SIGKILLs every member by its PID, reaps it, and removes the cluster's folder.
    fn drop(&mut self) {
        self.kill_all();
        let _ = fs::remove_dir_all(&self.root);
        // (`tmp`, dropped next, finds the folder gone.)
        let _ = self.tmp.take();
    }
}

// --- the shared cluster ---

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// One single-member cluster (plain HTTP, no auth) shared by every test of this process,
/// started on first use. Its folder is `<temp dir>/homelab-etcd-shared-<pid>`; folders of that
/// name whose process is gone are removed first. It lives until the process ends: its etcd is
/// forked by the spawner thread, which never ends, with PR_SET_PDEATHSIG, so it dies with the
/// process; on a normal exit (also a failed test run) an `atexit` handler also kills it and
/// removes its folder.
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| {
        remove_stale_shared_dirs();
        let root = std::env::temp_dir().join(format!("{SHARED_PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let cluster = Cluster::start_in(root, None, Options::default());
        // SAFETY: registers a plain `extern "C" fn` that never unwinds.
        unsafe { libc::atexit(stop_shared_at_exit) };
        cluster
    })
}

/// At process exit: kills the shared cluster's member and removes its folder (best effort,
/// never unwinds).
extern "C" fn stop_shared_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(c) = SHARED.get() {
            // Not `lock()`: a thread still holding the members at exit must not hang the exit
            // (PDEATHSIG then kills the member, and the next run removes the folder).
            if let Ok(mut members) = c.members.try_lock() {
                for m in members.iter_mut() {
                    m.kill();
                }
                let _ = fs::remove_dir_all(&c.root);
            }
        }
    });
}

/// Removes `<temp dir>/homelab-etcd-shared-<pid>` folders whose process no longer exists.
fn remove_stale_shared_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SHARED_PREFIX))
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

// --- the spawner thread ---

struct SpawnJob {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Forks `cmd` from the process-wide spawner thread (started on first use, never ends), with
/// `PR_SET_PDEATHSIG = SIGKILL`: the child dies when that thread does, that is with the process.
fn spawn_daemon(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                // The sender lives in a static: `rx` never disconnects. Never return anyway:
                // the children's death signal is tied to this thread.
                for SpawnJob { mut cmd, reply } in rx.iter() {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
                loop {
                    thread::park();
                }
            })
            .expect("start the etcd spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(SpawnJob { cmd, reply })
        .expect("the etcd spawner thread is gone");
    answer.recv().expect("the etcd spawner thread is gone")
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid) and builds errors without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would kill this child.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

// --- helpers ---

/// Whether this etcd accepts `--unsafe-no-fsync` (an unknown flag makes it exit with status 2).
fn no_fsync_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let mut cmd = Command::new(ETCD);
        remove_env_prefix(&mut cmd, "ETCD_");
        cmd.args(["--unsafe-no-fsync", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// `n` distinct loopback ports free right now (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Removes the variables starting with `prefix` from `cmd`'s environment (etcd and etcdctl
/// refuse a flag that a variable also sets).
fn remove_env_prefix(cmd: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with(prefix)) {
            cmd.env_remove(key);
        }
    }
}

/// Runs `cmd` (stdin closed) to its end, capturing its output.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()))
}

/// The last `lines` lines of a file (of its last 64 KiB), or a note when it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// The unsigned integer after `"key":` in a JSON text (etcdctl's IDs are beyond f64).
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let rest = json[json.find(&pat)? + pat.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `n` random letters and digits (from /dev/urandom).
fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

/// Makes the TLS material in `dir` with the openssl CLI: a CA, a server certificate for
/// 127.0.0.1 (serverAuth and clientAuth: peers use it both ways), a client certificate
/// (`CN=homelab-client`, clientAuth) and an unrelated second CA. RSA 2048; the four keys are
/// generated in parallel.
fn make_tls(dir: &Path) -> Tls {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let cnf = dir.join("openssl.cnf");
    fs::write(
        &cnf,
        "[req]\n\
         distinguished_name = dn\n\
         [dn]\n\
         [ca]\n\
         basicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth,clientAuth\n\
         subjectAltName = IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n\
         [client]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = clientAuth\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )
    .expect("write openssl.cnf");
    let p = |name: &str| dir.join(name);
    let tls = Tls {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server-key.pem"),
        client_cert: p("client.pem"),
        client_key: p("client-key.pem"),
        other_ca: p("other-ca.pem"),
    };
    // `fixed`: the constant words of the command line; `files`: (option, path) pairs.
    let openssl = |fixed: &str, subject: Option<&str>, files: &[(&str, &Path)]| {
        let mut cmd = Command::new("openssl");
        cmd.args(fixed.split_whitespace());
        if let Some(cn) = subject {
            cmd.arg("-subj").arg(format!("/CN={cn}"));
        }
        for (option, path) in files {
            cmd.arg(option).arg(path);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let (ca_key, other_key) = (p("ca-key.pem"), p("other-ca-key.pem"));
    let (server_csr, client_csr) = (p("server.csr"), p("client.csr"));
    let self_signed = |cn: &str, key: &Path, cert: &Path| {
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -extensions ca",
            Some(cn),
            &[("-config", &cnf), ("-keyout", key), ("-out", cert)],
        )
    };
    let request = |cn: &str, key: &Path, csr: &Path| {
        openssl(
            "req -new -newkey rsa:2048 -nodes",
            Some(cn),
            &[("-config", &cnf), ("-keyout", key), ("-out", csr)],
        )
    };
    // The four key generations (the slow part) run at once.
    let keygens = [
        self_signed("homelab-test-ca", &ca_key, &tls.ca),
        self_signed("homelab-test-other-ca", &other_key, &tls.other_ca),
        request("127.0.0.1", &tls.server_key, &server_csr),
        request("homelab-client", &tls.client_key, &client_csr),
    ];
    let children: Vec<Child> = keygens
        .into_iter()
        .map(|mut c| c.spawn().expect("run openssl (is it installed?)"))
        .collect();
    for child in children {
        check_openssl(child.wait_with_output());
    }
    for (csr, cert, ext) in [
        (&server_csr, &tls.server_cert, "server"),
        (&client_csr, &tls.client_cert, "client"),
    ] {
        // `x509 -req` takes the extensions from -extfile (it reads no -config).
        let mut cmd = openssl(
            &format!("x509 -req -days 3650 -sha256 -extensions {ext}"),
            None,
            &[
                ("-in", csr),
                ("-CA", &tls.ca),
                ("-CAkey", &ca_key),
                ("-extfile", &cnf),
                ("-out", cert),
            ],
        );
        cmd.arg("-set_serial").arg(format!("0x{}", random_hex(16)));
        check_openssl(cmd.output());
    }
    tls
}

fn check_openssl(out: io::Result<Output>) {
    let out = out.expect("run openssl");
    if !out.status.success() {
        panic!(
            "openssl failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `n` random hex digits (from /dev/urandom).
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex[..n].to_string()
}
