//! The etcd registry under real OS processes (the test binary re-executed as workers, see
//! `util::worker`) on a real 3-member etcd cluster on loopback (`util::etcd_cluster`):
//! sixteen provider processes of two lab hosts sharing one prefix while the leader and then a
//! follower are SIGKILLed and restarted and the leader is paused past the election timeout
//! (no overlap, every acknowledged change present, the chain verifies, every client fails
//! over); and writers SIGKILLed at random moments of a stream of changes (after each kill a
//! fresh reader finds the document and its log telling one and the same history).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homelab::audit::{Actor, Client, Event};
use homelab::net::{overlaps, Ipv4Net};
use homelab::registry::etcd::{EtcdConfig, EtcdError, EtcdStore, DEFAULT_PREFIX};
use homelab::registry::{
    Allocation, Document, Entry, LabRecord, Origin, Planned, Registry, RegistryError, Status, SystemClock, Wants,
    Workspace,
};
use homelab::settings::{validate, RawSettings};

use crate::util::etcd_cluster::{Cluster, Options, ELECTION_MS};
use crate::util::worker::{self, report, Worker};

/// The worker test's full name in this binary.
const WORKER: &str = "registry_etcd_processes::worker";
const ENDPOINTS: &str = "HOMELAB_TEST_ETCD_ENDPOINTS";
const PREFIX: &str = "HOMELAB_TEST_ETCD_PREFIX";
const GROUP: &str = "HOMELAB_TEST_ETCD_GROUP";
const INDEX: &str = "HOMELAB_TEST_ETCD_INDEX";
const ITERATIONS: &str = "HOMELAB_TEST_ETCD_ITERATIONS";
const HOME: &str = "HOMELAB_TEST_ETCD_HOME";
const GO: &str = "HOMELAB_TEST_ETCD_GO";
const STOP: &str = "HOMELAB_TEST_ETCD_STOP";
const THINK: &str = "HOMELAB_TEST_ETCD_THINK_MS";

/// The two lab hosts sharing the registry.
const GROUPS: [&str; 2] = ["host-a", "host-b"];
/// Names each worker owns (nobody else touches them: the expected state of each is exact).
const NAMES_PER_WORKER: usize = 3;
/// The pause of a provider of the sixteen between two steps, in milliseconds (from, to):
/// providers plan and apply now and then, not in a tight loop (and sixteen writers racing
/// for one journal key without a pause starve each other on two busy cores).
const THINK_MS: (u64, u64) = (600, 1400);
/// The reservations' time to live: nothing expires during a test.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Pools with room for every name at once (16 workers × 3 names = 48 holders; 256 slots per
/// kind), disjoint from each other and from the default management pool.
fn pools() -> homelab::registry::Pools {
    validate(&RawSettings {
        host_pool: Some("10.64.0.0/16".into()),
        host_prefix: Some(24),
        pod_pool: Some("10.128.0.0/12".into()),
        pod_prefix: Some(20),
        service_pool: Some("10.160.0.0/12".into()),
        service_prefix: Some(20),
        ..RawSettings::default()
    })
    .expect("test pools")
    .pools
}

/// `http://…` endpoints as the `ENDPOINTS` input spells them.
fn config(endpoints: &str, prefix: &str) -> EtcdConfig {
    EtcdConfig::new(endpoints.split(',').map(String::from).collect(), prefix)
}

/// A registry on a new etcd store (its own client, nothing cached), as `actor`.
fn etcd_registry(config: EtcdConfig, actor: Actor) -> Registry {
    Registry::new(
        Arc::new(EtcdStore::new(config)),
        pools(),
        TTL,
        Arc::new(SystemClock),
        actor,
        Client::provider("integration-test"),
    )
}

/// A reader in the test process.
fn reader(endpoints: &str, prefix: &str) -> Registry {
    etcd_registry(config(endpoints, prefix), Actor::current())
}

/// `host-a` → `labhost-a`, the machine name of that lab host.
fn machine(group: &str) -> String {
    format!("lab{group}")
}

/// `host-a` → `homelab-a`, that host's netns_host.
fn netns_host(group: &str) -> String {
    format!("homelab-{}", group.trim_start_matches("host-"))
}

/// The names worker `index` of `group` owns: `host-a-w03-0` …
fn names_of(group: &str, index: usize) -> Vec<String> {
    (0..NAMES_PER_WORKER).map(|n| format!("{group}-w{index:02}-{n}")).collect()
}

/// The lab a worker of `group` records with each claim.
fn lab(group: &str) -> LabRecord {
    LabRecord {
        control_planes: 1,
        workers: 1,
        settings: [("netns_host".to_string(), netns_host(group))].into_iter().collect(),
        host: Some(format!("{}/{}", machine(group), netns_host(group))),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine, so a worker's
/// timestamps compare with the parent's.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A small deterministic generator (the seed is printed, to replay a failure's timing).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn seeded(what: &str) -> Lcg {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        println!("{what} seed {seed}");
        Lcg(seed)
    }
}

fn nets(a: &Allocation) -> [Ipv4Net; 3] {
    [a.subnet, a.pod_cidr, a.service_cidr]
}

fn words(a: Option<&Allocation>) -> String {
    match a {
        Some(a) => format!("{} {} {}", a.subnet, a.pod_cidr, a.service_cidr),
        None => "- - -".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

/// The worker processes' entry point: does the job named by `HOMELAB_TEST_WORKER`. Ignored, so a
/// test run shows it as skipped instead of counting it as a pass: the tests of this file start it
/// in processes of their own (`--ignored --exact`).
#[test]
#[ignore = "worker process entry point, started by the other tests of this file"]
fn worker() {
    let role = worker::role().expect("HOMELAB_TEST_WORKER names the job: this is a worker, started by the tests of this file");
    // Never outlive the test that started us, even if it is killed.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a signal number for this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    match role.as_str() {
        "churn-etcd" => churn_etcd(),
        other => panic!("unknown worker role {other}"),
    }
}

/// What this worker's last acknowledged change left for one of its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Absent,
    Reserved(Allocation),
    Allocated(Allocation),
}

impl Known {
    /// Whether `entry` (a read) shows this state: a reservation also still holds (its hold key
    /// is there, on its lease).
    fn shows(&self, entry: Option<&Entry>, now: time::OffsetDateTime) -> bool {
        match (self, entry) {
            (Known::Absent, None) => true,
            (Known::Reserved(a), Some(e)) => e.status == Status::Reserved && e.allocation == *a && e.holds(now),
            (Known::Allocated(a), Some(e)) => e.status == Status::Allocated && e.allocation == *a,
            _ => false,
        }
    }
}

/// Errors a change may meet while members are killed or paused: no member answered within the
/// store's retry budget (the store says nothing was changed; the change may still have
/// committed, its answer lost).
fn expected_under_faults(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Etcd(EtcdError::Unreachable { .. }))
}

/// Worker: one provider process of lab host `GROUP` (its own workspace on that host), owning
/// the names [`names_of`]. Once the `GO` file appears, it picks one of its names at random and
/// moves it along, as plans and applies would, until the `STOP` file appears (at most
/// `ITERATIONS` steps):
/// - absent, or a reservation that no longer holds → `reserve` (a plan);
/// - reserved → `claim` with exactly the reserved networks (an apply);
/// - allocated → `release` (a destroy), or one time in three `reserve`, which must answer
///   `Existing` with the same networks and write nothing (a plan of an existing lab).
///
/// Before each step it reads the name: the read must show what its last acknowledged change
/// left (read-your-writes, whichever member answers). Reports, each with the step's start and
/// end on CLOCK_MONOTONIC:
/// - `ack <start> <end> <op> <name> <subnet> <pod> <service>` after every acknowledged call
///   (`op` = reserve, claim, release, plan; a release answered `None` has `- - -`);
/// - `err <start> <end> <op> <name> <subnet> <pod> <service> <message>` for an error expected
///   under faults (the networks are the claimed ones, else `- - -`);
/// - `bad <message>` for anything else (the parent fails);
/// - `call <name>` when it starts the call of a step (after the read);
/// - `ready` once connected, and at the end `done <steps> stopped|cap`.
///
/// Between two steps it pauses for `THINK` (`<from>-<to>` milliseconds, `0-0`: none).
fn churn_etcd() {
    let endpoints = worker::input(ENDPOINTS);
    let prefix = worker::input(PREFIX);
    let group = worker::input(GROUP);
    let index: usize = worker::input(INDEX).parse().expect("INDEX");
    let iterations: u64 = worker::input(ITERATIONS).parse().expect("ITERATIONS");
    let think: (u64, u64) = worker::input(THINK)
        .split_once('-')
        .map(|(a, b)| (a.parse().expect("THINK"), b.parse().expect("THINK")))
        .expect("THINK is <from>-<to>");
    let home = PathBuf::from(worker::input(HOME));
    let (go, stop) = (PathBuf::from(worker::input(GO)), PathBuf::from(worker::input(STOP)));
    // This process is a provider of lab host `group`, in a Terraform workspace of its own
    // under that host's home.
    let actor = Actor {
        host: machine(&group),
        ..Actor::current()
    };
    let mut origin = Origin::current();
    origin.workspace = Workspace {
        host: machine(&group),
        dir: home.join(format!("w{index:02}")).display().to_string(),
        name: "default".into(),
    };
    let registry = etcd_registry(config(&endpoints, &prefix), actor).with_origin(origin);
    let names = names_of(&group, index);
    let lab = lab(&group);
    // Connected before the start, so that the race is among changes, not connections.
    if let Err(e) = registry.snapshot() {
        report(&format!("bad first read: {e}"));
        return;
    }
    report("ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !go.exists() {
        assert!(Instant::now() < deadline, "no go signal");
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut rng = Lcg(mono_ns() ^ u64::from(std::process::id()) << 20);
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut steps = 0;
    let mut stopped = false;
    while steps < iterations {
        if stop.exists() {
            stopped = true;
            break;
        }
        steps += 1;
        let name = &names[rng.below(names.len() as u64) as usize];
        step(&registry, name, &lab, &mut rng, &mut known);
        if think.1 > 0 {
            std::thread::sleep(Duration::from_millis(think.0 + rng.below(think.1 - think.0 + 1)));
        }
    }
    report(&format!("done {steps} {}", if stopped { "stopped" } else { "cap" }));
}

/// One step of [`churn_etcd`] on `name`.
fn step(registry: &Registry, name: &str, lab: &LabRecord, rng: &mut Lcg, known: &mut BTreeMap<String, Known>) {
    let start = mono_ns();
    let failed = |op: &str, planned: Option<&Allocation>, e: RegistryError, known: &mut BTreeMap<String, Known>| {
        let end = mono_ns();
        if expected_under_faults(&e) {
            // Unknown from here on: the change may have committed with its answer lost.
            known.remove(name);
            report(&format!("err {start} {end} {op} {name} {} {e}", words(planned)));
        } else {
            report(&format!("bad {op} {name}: {e:?}: {e}"));
        }
    };
    let current = match registry.get(name) {
        Ok(c) => c,
        Err(e) => return failed("get", None, e, known),
    };
    let now = registry.now();
    if let Some(k) = known.get(name) {
        if !k.shows(current.as_ref(), now) {
            report(&format!("bad read of {name} after its acknowledged change: expected {k:?}, read {current:?}"));
        }
    }
    // From here until its `ack` or `err`, this process is inside a registry call (reads, maybe
    // a lease grant, the transaction, its answer).
    report(&format!("call {name}"));
    let ack = |op: &str, a: Option<&Allocation>| report(&format!("ack {start} {} {op} {name} {}", mono_ns(), words(a)));
    match current {
        Some(e) if e.status == Status::Allocated && rng.below(3) == 0 => {
            match registry.reserve(name, &Wants::auto(false), "netns", &[]) {
                Ok(Planned::Existing { entry, allocation }) if entry.allocation == e.allocation && allocation == e.allocation => {
                    ack("plan", Some(&allocation))
                }
                Ok(other) => report(&format!("bad plan of allocated {name} ({}): {other:?}", e.allocation)),
                Err(err) => failed("plan", None, err, known),
            }
        }
        Some(e) if e.status == Status::Allocated => match registry.release(name) {
            Ok(Some(gone)) if gone.allocation == e.allocation => {
                known.insert(name.into(), Known::Absent);
                ack("release", Some(&gone.allocation));
            }
            // Only when the release committed, its answer was lost, and the retried change
            // found the name gone (nobody else touches it).
            Ok(None) => {
                known.insert(name.into(), Known::Absent);
                ack("release", None);
            }
            Ok(Some(gone)) => report(&format!("bad release of {name} ({}) released {}", e.allocation, gone.allocation)),
            Err(err) => failed("release", None, err, known),
        },
        Some(e) if e.holds(now) => match registry.claim(name, &e.allocation, "netns", lab.clone(), &[]) {
            Ok(got) if got.allocation == e.allocation && got.status == Status::Allocated => {
                known.insert(name.into(), Known::Allocated(got.allocation));
                ack("claim", Some(&got.allocation));
            }
            Ok(got) => report(&format!("bad claim of {name} ({}) got {got:?}", e.allocation)),
            Err(err) => failed("claim", Some(&e.allocation), err, known),
        },
        _ => match registry.reserve(name, &Wants::auto(false), "netns", &[]) {
            Ok(Planned::Reserved(got)) => {
                known.insert(name.into(), Known::Reserved(got.allocation));
                ack("reserve", Some(&got.allocation));
            }
            Ok(other) => report(&format!("bad reserve of {name}: {other:?}")),
            Err(err) => failed("reserve", None, err, known),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The parent's side: reports, workers, checks
// ---------------------------------------------------------------------------------------------

/// One `ack` or `err` report.
#[derive(Clone, Debug)]
struct Step {
    ok: bool,
    start: u64,
    op: String,
    name: String,
    nets: Option<[Ipv4Net; 3]>,
    line: String,
}

fn parse_step(line: &str) -> Option<Step> {
    let w: Vec<&str> = line.splitn(9, ' ').collect();
    let ok = match w[0] {
        "ack" => true,
        "err" => false,
        _ => return None,
    };
    assert!(w.len() >= 8, "malformed report {line:?}");
    let nets = (w[5] != "-").then(|| [w[5], w[6], w[7]].map(|n| n.parse().unwrap_or_else(|_| panic!("report {line:?}"))));
    Some(Step {
        ok,
        start: w[1].parse().expect("start"),
        op: w[3].into(),
        name: w[4].into(),
        nets,
        line: line.into(),
    })
}

/// A worker process and everything it reported.
struct Proc {
    label: String,
    group: String,
    index: usize,
    pid: u32,
    worker: Option<Worker>,
    reports: Vec<String>,
}

/// What every worker of a test shares: the cluster's endpoints and the prefix, the folder of
/// the two hosts' homes (`<dir>/host-a`, `<dir>/host-b`), the `go` and `stop` files, the
/// think time.
struct Fleet {
    endpoints: String,
    prefix: String,
    dir: PathBuf,
    think: (u64, u64),
}

impl Fleet {
    fn go(&self) -> PathBuf {
        self.dir.join("go")
    }

    fn stop(&self) -> PathBuf {
        self.dir.join("stop")
    }

    /// Start worker `index` of lab host `group` (in its workspace folder under that host's home).
    fn spawn(&self, group: &str, index: usize) -> Proc {
        let home = self.dir.join(group);
        let dir = home.join(format!("w{index:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = worker::command(WORKER, "churn-etcd");
        c.env(ENDPOINTS, &self.endpoints)
            .env(PREFIX, &self.prefix)
            .env(GROUP, group)
            .env(INDEX, index.to_string())
            .env(ITERATIONS, "1000000")
            .env(THINK, format!("{}-{}", self.think.0, self.think.1))
            .env(HOME, &home)
            .env(GO, self.go())
            .env(STOP, self.stop())
            .current_dir(&dir);
        let w = Worker::spawn(c);
        Proc {
            label: format!("{group}/w{index:02}"),
            group: group.into(),
            index,
            pid: w.pid(),
            worker: Some(w),
            reports: Vec::new(),
        }
    }
}

impl Proc {
    /// Wait (at most 60 s) for a report satisfying `want` (or `bad`), keeping every report.
    fn wait_report(&mut self, want: impl Fn(&str) -> bool) {
        let w = self.worker.as_mut().expect("running");
        let mut seen = Vec::new();
        w.wait_for(Duration::from_secs(60), |r| seen.push(r.to_string()), |r| want(r) || r.starts_with("bad "));
        self.reports.extend(seen);
        self.no_bad();
    }

    /// Take in what it reported so far; panics on a `bad` report.
    fn pump(&mut self) {
        if let Some(w) = &self.worker {
            while let Some(r) = w.next_report(Duration::ZERO) {
                self.reports.push(r);
            }
        }
        self.no_bad();
    }

    fn no_bad(&self) {
        if let Some(bad) = self.reports.iter().find(|r| r.starts_with("bad ")) {
            panic!("worker {} (pid {}): {bad}", self.label, self.pid);
        }
    }

    fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        self.reports.iter().filter_map(|r| parse_step(r))
    }

    /// How many changes (writes: not plans) it acknowledged in steps that started at or after
    /// `since`.
    fn acked_since(&self, since: u64) -> usize {
        self.steps().filter(|s| s.ok && s.op != "plan" && s.start >= since).count()
    }

    /// SIGKILL it (no chance to finish its transaction) and keep its last reports.
    fn kill(&mut self) {
        if let Some(w) = self.worker.take() {
            self.reports.extend(w.kill());
        }
        self.no_bad();
    }

    /// Send it `signal` by its PID (while it runs).
    fn signal(&self, signal: libc::c_int) {
        assert!(self.worker.is_some(), "{} is not running", self.label);
        // SAFETY: kill(2) on the PID of our own child, which is not reaped yet.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal {signal} to {}", self.pid);
    }
}

/// Wait until every process acknowledged `n` changes in steps that started at or after `since`
/// (CLOCK_MONOTONIC), at most `timeout`; panics naming the ones that did not (`what` says after
/// what).
fn wait_progress(procs: &mut [Proc], n: usize, since: u64, timeout: Duration, what: &str, cluster: &Cluster) -> Duration {
    let started = Instant::now();
    loop {
        for p in procs.iter_mut() {
            p.pump();
        }
        let behind: Vec<&str> = procs.iter().filter(|p| p.acked_since(since) < n).map(|p| p.label.as_str()).collect();
        if behind.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            let last: Vec<String> = procs
                .iter()
                .filter(|p| p.acked_since(since) < n)
                .map(|p| format!("{}: {:?}", p.label, p.reports.iter().rev().take(3).collect::<Vec<_>>()))
                .collect();
            let tails: Vec<String> = (0..cluster.len()).map(|i| format!("m{i}:\n{}", cluster.log_tail(i))).collect();
            panic!(
                "{what}: no acknowledged change in {timeout:?} from {behind:?} (clients did not fail over)\n{}\n{}",
                last.join("\n"),
                tails.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The networks of an event's `allocation` detail.
fn event_nets(e: &Event) -> Result<[Ipv4Net; 3], String> {
    let a = &e.details["allocation"];
    let get = |k: &str| -> Result<Ipv4Net, String> {
        a[k].as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("event {} ({} {}): no allocation.{k} in {}", e.seq, e.action, e.subject, e.details))
    };
    Ok([get("subnet")?, get("pod_cidr")?, get("service_cidr")?])
}

/// What an instance holds, by name: status and networks.
type Shape = BTreeMap<String, (Status, [Ipv4Net; 3])>;

fn shape(doc: &Document) -> (Shape, BTreeMap<String, [Ipv4Net; 3]>) {
    (
        doc.instances.values().map(|e| (e.name.clone(), (e.status, nets(&e.allocation)))).collect(),
        doc.released.iter().map(|(n, r)| (n.clone(), nets(&r.allocation))).collect(),
    )
}

/// Replay the event log from an empty registry: `instance.reserve` and `instance.allocate` put
/// the name with the event's networks (reserved, allocated), `instance.release` removes it
/// (remembering an allocated one's networks as released). On the way, no network of a name
/// may overlap one of another name it is put next to: the history itself never overlaps (no
/// reservation expires in these tests). Any other action is an error (nothing here takes a
/// reservation over or loses one).
fn replay(events: &[Event]) -> Result<(Shape, BTreeMap<String, [Ipv4Net; 3]>), String> {
    let mut held: Shape = BTreeMap::new();
    let mut released = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if e.seq != i as u64 + 1 {
            return Err(format!("event {} has seq {}", i + 1, e.seq));
        }
        let n = event_nets(e)?;
        let status = match e.action.as_str() {
            "instance.reserve" => Status::Reserved,
            "instance.allocate" => Status::Allocated,
            "instance.release" => {
                match held.remove(&e.subject) {
                    Some((s, had)) if had == n => {
                        if s == Status::Allocated {
                            released.insert(e.subject.clone(), n);
                        }
                    }
                    other => return Err(format!("event {}: release of {} {n:?}, which held {other:?}", e.seq, e.subject)),
                }
                continue;
            }
            other => return Err(format!("event {}: unexpected action {other} on {}", e.seq, e.subject)),
        };
        if held.get(&e.subject).is_some_and(|(s, _)| *s == Status::Allocated) {
            return Err(format!("event {}: {} of {}, already allocated", e.seq, e.action, e.subject));
        }
        for (other, (_, theirs)) in held.iter().filter(|(o, _)| **o != e.subject) {
            for a in &n {
                for b in theirs {
                    if overlaps(a, b) {
                        return Err(format!("event {} ({} {} {a}) overlaps {b} of {other}", e.seq, e.action, e.subject));
                    }
                }
            }
        }
        if status == Status::Allocated {
            released.remove(&e.subject);
        }
        held.insert(e.subject.clone(), (status, n));
    }
    Ok((held, released))
}

/// No network held (allocated, or reserved and live) by one name overlaps any network of
/// another, whatever the kinds; and every reservation still holds (the TTL is a day: its hold
/// key is there, on its lease). The number of holders.
fn assert_disjoint(doc: &Document, now: time::OffsetDateTime, when: &str) -> usize {
    let mut all: Vec<(&str, Ipv4Net)> = Vec::new();
    for e in doc.instances.values() {
        assert!(e.holds(now), "{when}: {} is in the registry but holds nothing: {e:?}", e.name);
        assert_eq!(e.allocation.mgmt_cidr, None, "{when}: {}", e.name);
        all.extend(e.allocation.iter().map(|(_, n)| (e.name.as_str(), n)));
    }
    for (i, (na, a)) in all.iter().enumerate() {
        for (nb, b) in &all[i + 1..] {
            assert!(na == nb || !overlaps(a, b), "{when}: {na} {a} overlaps {nb} {b}");
        }
    }
    doc.instances.len()
}

/// Every key under `prefix` (`etcdctl get --prefix --keys-only`).
fn raw_keys(cluster: &Cluster, prefix: &str, when: &str) -> BTreeSet<String> {
    let out = cluster.etcdctl().args(["get", prefix, "--prefix", "--keys-only"]).output().expect("run etcdctl");
    assert!(out.status.success(), "{when}: etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

/// The registry's raw keys are exactly the document's: besides the journal, one `instances/`
/// key per entry, one `released/` key per released record, one `holds/` key per reservation
/// (the live ones: all of them here) and one `events/` key per event.
fn assert_raw_keys(keys: &BTreeSet<String>, prefix: &str, doc: &Document, when: &str) {
    let mut want: BTreeSet<String> = BTreeSet::new();
    want.insert(format!("{prefix}registry/journal"));
    for e in doc.instances.values() {
        want.insert(format!("{prefix}registry/instances/{}", e.name));
        if e.status == Status::Reserved {
            want.insert(format!("{prefix}registry/holds/{}", e.name));
        }
    }
    for n in doc.released.keys() {
        want.insert(format!("{prefix}registry/released/{n}"));
    }
    for seq in 1..=doc.journal.seq {
        want.insert(format!("{prefix}events/{seq:020}"));
    }
    let extra: Vec<_> = keys.difference(&want).collect();
    let missing: Vec<_> = want.difference(keys).collect();
    assert!(extra.is_empty() && missing.is_empty(), "{when}: keys not in the document: {extra:?}; keys missing: {missing:?}");
}

/// What one reader sees of the registry, all of it as of one change.
struct Seen {
    doc: Document,
    events: Vec<Event>,
    keys: BTreeSet<String>,
    verified: homelab::audit::Verified,
}

/// The document, the event log, the raw keys and the verified chain, all as of one change:
/// read the document, the rest, and the document again, until both documents are at the same
/// change (every change moves the journal) and the log and its verification end there
/// (writers may still be committing a change they sent).
fn consistent_read(r: &Registry, cluster: &Cluster, prefix: &str, when: &str) -> Seen {
    let read = |what: &str, e: RegistryError| -> ! { panic!("{when}: {what} does not read: {e}") };
    for _ in 0..100 {
        let before = r.snapshot().unwrap_or_else(|e| read("the registry", e));
        let events = r.store().events().unwrap_or_else(|e| read("the event log", e));
        let keys = raw_keys(cluster, prefix, when);
        let verified = r.verify_events().unwrap_or_else(|e| panic!("{when}: the hash chain does not verify: {e}"));
        let after = r.snapshot().unwrap_or_else(|e| read("the registry", e));
        let seq = after.journal.seq;
        if before.journal.seq == seq && events.last().map_or(0, |e| e.seq) == seq && verified.events == seq {
            return Seen { doc: after, events, keys, verified };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{when}: the registry never held still");
}

/// Every check of "one consistent registry" on what `r` reads now (see the callers).
fn assert_consistent(r: &Registry, cluster: &Cluster, prefix: &str, when: &str) -> (Document, Vec<Event>) {
    let Seen { doc, events, keys, verified } = consistent_read(r, cluster, prefix, when);
    assert_eq!((verified.head.seq, &verified.head.hash), (doc.journal.seq, &doc.journal.hash), "{when}: the verified chain ends elsewhere than the document");
    // The document's journal holds the newest change's events, exactly as the log has them.
    let newest = &doc.journal.events;
    assert!(!newest.is_empty() || doc.journal.seq == 0, "{when}: the journal names no change");
    assert_eq!(newest.as_slice(), &events[events.len() - newest.len()..], "{when}: the journal's events are not the log's newest");
    // The log, replayed, is the document: no entry without its event, no event without its entry.
    let replayed = replay(&events).unwrap_or_else(|e| panic!("{when}: the event log does not replay: {e}"));
    assert_eq!(replayed, shape(&doc), "{when}: the document is not what its event log says");
    assert_disjoint(&doc, r.now(), when);
    assert_raw_keys(&keys, prefix, &doc, when);
    (doc, events)
}

/// The acknowledged writes of `p`, in order, are among its events in the log (same action,
/// same name, same networks), in that order. Returns the events of `p` no acknowledgement
/// matched.
fn match_acks<'e>(p: &Proc, events: &'e [Event]) -> Vec<&'e Event> {
    let mine: Vec<&Event> = events.iter().filter(|e| e.actor.pid == p.pid).collect();
    let mut at = 0;
    let mut matched = vec![false; mine.len()];
    for s in p.steps().filter(|s| s.ok && s.op != "plan") {
        let action = match s.op.as_str() {
            "reserve" => "instance.reserve",
            "claim" => "instance.allocate",
            "release" => "instance.release",
            other => panic!("{}: op {other}", p.label),
        };
        let found = mine[at..].iter().position(|e| {
            e.action == action && e.subject == s.name && s.nets.is_none_or(|n| event_nets(e).ok() == Some(n))
        });
        match found {
            Some(i) => {
                matched[at + i] = true;
                at += i + 1;
            }
            None => panic!(
                "{} (pid {}): acknowledged `{}` is not in the event log (after its event {at} of {})",
                p.label,
                p.pid,
                s.line,
                mine.len()
            ),
        }
    }
    mine.into_iter().zip(matched).filter(|(_, m)| !m).map(|(e, _)| e).collect()
}

// ---------------------------------------------------------------------------------------------
// Sixteen processes on two hosts through leader and follower kills and a paused leader
// ---------------------------------------------------------------------------------------------

#[test]
fn sixteen_processes_on_two_hosts_share_one_etcd_registry_with_disjoint_networks_through_leader_and_follower_kills_and_a_paused_leader() {
    let started = Instant::now();
    let cluster = Cluster::start(Options { members: 3, tls: false, auth: false });
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet {
        endpoints: cluster.endpoints().join(","),
        prefix: DEFAULT_PREFIX.into(),
        dir: dir.path().into(),
        think: THINK_MS,
    };
    // Two lab hosts, each with its home; eight providers on each.
    let mut procs: Vec<Proc> = GROUPS.iter().flat_map(|g| (0..8).map(|i| fleet.spawn(g, i))).collect();
    for p in &mut procs {
        p.wait_report(|r| r == "ready");
    }
    println!("cluster and 16 workers up in {:?}", started.elapsed());
    std::fs::write(fleet.go(), b"go").unwrap();
    let progress = |procs: &mut [Proc], n: usize, what: String, since: u64| {
        let took = wait_progress(procs, n, since, Duration::from_secs(30), &what, &cluster);
        println!("{what}: every worker acknowledged {n} changes within {took:?} ({:?} into the run)", started.elapsed());
    };
    progress(&mut procs, 1, "start".into(), mono_ns());
    // A member down or paused for at least this long, well past the election timeout (raft
    // picks it between 1 and 2 × ELECTION_MS), so a lost leader is replaced while it is away;
    // and until every client made two changes without it.
    let away = Duration::from_millis(4 * ELECTION_MS);
    const WITHOUT: usize = 2;
    let pace = |since: Instant| {
        if let Some(rest) = away.checked_sub(since.elapsed()) {
            std::thread::sleep(rest);
        }
    };
    // The leader, then a follower, SIGKILLed: while it is down every client goes on with the
    // other two (after an election, for the leader); then it restarts and rejoins.
    let mut killed = None;
    for (role, pick_leader) in [("leader", true), ("follower", false)] {
        let leader = cluster.leader();
        // The follower: not the member killed before (each member has its turn).
        let victim = if pick_leader {
            leader
        } else {
            (0..cluster.len()).find(|i| *i != leader && Some(*i) != killed).expect("a third member")
        };
        killed = Some(victim);
        let (t, at) = (mono_ns(), Instant::now());
        cluster.kill(victim);
        progress(&mut procs, WITHOUT, format!("{role} m{victim} SIGKILLed, still down"), t);
        pace(at);
        cluster.restart(victim);
    }
    // The leader, paused past the election timeout: its connections stay open and answer
    // nothing; the others elect a new leader, every client goes on with them.
    let paused = cluster.leader();
    let (t, at) = (mono_ns(), Instant::now());
    cluster.pause(paused);
    progress(&mut procs, WITHOUT, format!("leader m{paused} paused (SIGSTOP), still paused"), t);
    pace(at);
    let paused_for = at.elapsed();
    let t = mono_ns();
    cluster.resume(paused);
    cluster.wait_healthy();
    progress(&mut procs, 1, format!("m{paused} resumed after {paused_for:?}"), t);
    std::fs::write(fleet.stop(), b"stop").unwrap();
    for p in &mut procs {
        let (status, reports, stderr) = p.worker.take().unwrap().join(Duration::from_secs(30));
        p.reports.extend(reports);
        p.no_bad();
        assert!(status.success(), "worker {} failed: {status}\n{stderr}", p.label);
        assert!(p.reports.last().is_some_and(|r| r.starts_with("done ") && r.ends_with(" stopped")), "{}: {:?}", p.label, p.reports.last());
    }

    // A fresh store on the same prefix: one consistent registry (the log replays to the
    // document without any overlap on the way, the chain verifies, the keys are the document's).
    let prefix = fleet.prefix.as_str();
    let r = reader(&fleet.endpoints, prefix);
    let (doc, events) = assert_consistent(&r, &cluster, prefix, "after the run");
    let now = r.now();
    let holders = assert_disjoint(&doc, now, "after the run");
    // Every name is where its owner's last acknowledged change left it (when changes failed
    // after it, where one of those may have left it instead).
    let (mut acks, mut writes, mut errs, mut uncertain) = (0, 0, 0, 0);
    for p in &procs {
        let steps: Vec<Step> = p.steps().collect();
        acks += steps.iter().filter(|s| s.ok).count();
        writes += steps.iter().filter(|s| s.ok && s.op != "plan").count();
        errs += steps.iter().filter(|s| !s.ok).count();
        for name in names_of(&p.group, p.index) {
            let mine: Vec<&Step> = steps.iter().filter(|s| s.name == name && s.op != "get" && s.op != "plan").collect();
            let last_ack = mine.iter().rposition(|s| s.ok);
            let state = |s: &Step| -> Option<(Status, Option<[Ipv4Net; 3]>)> {
                match s.op.as_str() {
                    "reserve" => Some((Status::Reserved, s.nets.filter(|_| s.ok))),
                    "claim" => Some((Status::Allocated, s.nets)),
                    _ => None,
                }
            };
            let mut allowed: Vec<Option<(Status, Option<[Ipv4Net; 3]>)>> =
                vec![last_ack.and_then(|i| state(mine[i]))];
            let failed_after = &mine[last_ack.map_or(0, |i| i + 1)..];
            allowed.extend(failed_after.iter().map(|s| state(s)));
            if !failed_after.is_empty() {
                uncertain += 1;
            }
            let got = doc.instances.get(&name);
            let fits = allowed.iter().any(|a| match (a, got) {
                (None, None) => true,
                (Some((status, n)), Some(e)) => e.status == *status && n.is_none_or(|n| n == nets(&e.allocation)),
                _ => false,
            });
            assert!(
                fits,
                "{name}: the registry holds {got:?}, but {}'s acknowledged changes leave {:?}; its changes: {:#?}",
                p.label,
                allowed,
                mine.iter().map(|s| &s.line).collect::<Vec<_>>()
            );
            if let Some(e) = got {
                assert_eq!(e.owner.as_ref().map(|o| o.host.as_str()), Some(machine(&p.group).as_str()), "{name}");
                if e.status == Status::Allocated {
                    assert_eq!(e.lab.as_ref().and_then(|l| l.host.clone()), lab(&p.group).host, "{name}");
                }
            }
        }
    }
    // Every acknowledged change is in the log, as that process made it; what no acknowledgement
    // matches is accounted for by a failed call (a commit whose answer was lost) or is a
    // reservation renewed by a change re-run after such a commit.
    let verified = r.verify_events().unwrap();
    assert!(verified.events as usize >= writes, "{} events for {writes} acknowledged writes", verified.events);
    let pids: BTreeSet<u32> = procs.iter().map(|p| p.pid).collect();
    let foreign: Vec<&Event> = events.iter().filter(|e| !pids.contains(&e.actor.pid)).collect();
    assert!(foreign.is_empty(), "events of no worker: {foreign:?}");
    let mut unmatched_total = 0;
    for p in &procs {
        let unmatched = match_acks(p, &events);
        let failed = |op: &str| p.steps().filter(|s| !s.ok && s.op == op).count();
        for (action, op) in [("instance.allocate", "claim"), ("instance.release", "release")] {
            let n = unmatched.iter().filter(|e| e.action == action).count();
            assert!(n <= failed(op), "{}: {n} {action} events without an acknowledgement, {} failed {op}s: {unmatched:?}", p.label, failed(op));
        }
        unmatched_total += unmatched.len();
    }
    println!(
        "{} events, {acks} acknowledged calls ({writes} writes), {errs} failed calls, {unmatched_total} events of failed or re-run calls, \
         {uncertain} names last touched by a failed call; {holders} holders at the end; {:?} in all",
        verified.events,
        started.elapsed()
    );
    let per_worker: Vec<usize> = procs.iter().map(|p| p.steps().filter(|s| s.ok).count()).collect();
    println!("acknowledged calls per worker: {per_worker:?}");
}

// ---------------------------------------------------------------------------------------------
// Writers SIGKILLed in the middle of their transactions
// ---------------------------------------------------------------------------------------------

#[test]
fn writers_killed_mid_transaction_never_leave_a_partial_change_visible() {
    let started = Instant::now();
    let cluster = Cluster::start(Options { members: 3, tls: false, auth: false });
    let dir = tempfile::tempdir().unwrap();
    // A fast stream: no pause between steps.
    let fleet = Fleet {
        endpoints: cluster.endpoints().join(","),
        prefix: "/homelab-killed/".into(),
        dir: dir.path().into(),
        think: (0, 0),
    };
    let prefix = fleet.prefix.as_str();
    std::fs::write(fleet.go(), b"go").unwrap();
    let mut rng = Lcg::seeded("kill timing");
    // Three writers at a time, racing each other (a commit may be on its first try or re-run
    // after losing to another); one of them killed at a random moment of its stream, a new
    // process taking its place (same names and workspace, a new run). Slot i is worker i of
    // host-a or host-b.
    let slot = |i: usize| fleet.spawn(GROUPS[i % 2], i);
    let mut live: Vec<Proc> = (0..3).map(slot).collect();
    let mut dead: Vec<Proc> = Vec::new();
    let (mut mid_call, mut answer_lost) = (0, 0);
    const KILLS: usize = 30;
    for round in 0..KILLS {
        let v = rng.below(live.len() as u64) as usize;
        // Once it is in its stream (it acknowledged a change), somewhere inside one of its
        // next steps (a step is a read, then a call: reads, maybe a lease grant, the
        // transaction; a few milliseconds each).
        live[v].wait_report(|r| r.starts_with("ack "));
        std::thread::sleep(Duration::from_micros(rng.below(8000)));
        let mut victim = live.remove(v);
        victim.kill();
        if victim.reports.last().is_some_and(|r| r.starts_with("call ")) {
            mid_call += 1;
        }
        // The others hold still while the registry is read (a change they already sent still
        // commits, whole: the reads wait until the document and the log agree).
        for p in &live {
            p.signal(libc::SIGSTOP);
        }
        let when = format!("round {round}, after killing {} (pid {})", victim.label, victim.pid);
        // The invariant, for a fresh reader (a store of its own, nothing cached): the registry
        // is exactly what its event log says. Replaying the log (reserve, allocate, release, in
        // order) gives the document's entries, statuses, networks and released records, with
        // no two names overlapping at any point; the chain verifies; the journal's events are
        // the log's newest; every reservation has its hold key (on its lease); no key exists
        // that the document does not account for. So no change is ever visible in part: no
        // entry without its event, no event without its entry, no hold without its
        // reservation or the reverse.
        let (_, events) = assert_consistent(&reader(&fleet.endpoints, prefix), &cluster, prefix, &when);
        // The killed writer's acknowledged changes are all there, in order; at most one more of
        // its changes is (the one whose answer it was killed before reporting), and it is its
        // last.
        let unmatched = match_acks(&victim, &events);
        assert!(unmatched.len() <= 1, "{when}: events of changes it never acknowledged: {unmatched:?}");
        if let Some(e) = unmatched.first() {
            let last = events.iter().rev().find(|x| x.actor.pid == victim.pid).unwrap();
            assert_eq!(e.seq, last.seq, "{when}: an unacknowledged change before acknowledged ones");
            answer_lost += 1;
        }
        for p in &live {
            p.signal(libc::SIGCONT);
        }
        live.insert(v, slot(victim.index));
        dead.push(victim);
    }
    for mut p in live {
        p.kill();
        dead.push(p);
    }
    let r = reader(&fleet.endpoints, prefix);
    let (doc, events) = assert_consistent(&r, &cluster, prefix, "after the last kill");
    for p in &dead {
        let unmatched = match_acks(p, &events);
        assert!(unmatched.len() <= 1, "{}: {unmatched:?}", p.label);
        let failed: Vec<String> = p.steps().filter(|s| !s.ok).map(|s| s.line).collect();
        assert!(failed.is_empty(), "{}: failed calls, without any etcd fault: {failed:?}", p.label);
    }
    let acked: usize = dead.iter().map(|p| p.steps().filter(|s| s.ok && s.op != "plan").count()).sum();
    assert!(acked >= KILLS, "only {acked} acknowledged writes over {KILLS} kills");
    assert!(
        events.len() >= acked && events.len() <= acked + dead.len(),
        "{} events, {acked} acknowledged writes, {} processes",
        events.len(),
        dead.len()
    );
    // Kills did land inside calls, not only between them.
    assert!(mid_call > 0, "no kill landed inside a call");
    // And the next writer just goes on: its changes chain after the dead ones'.
    let mut next = fleet.spawn("host-b", 99);
    next.wait_report(|r| r.starts_with("ack "));
    std::fs::write(fleet.stop(), b"stop").unwrap();
    let (status, reports, stderr) = next.worker.take().unwrap().join(Duration::from_secs(30));
    next.reports.extend(reports);
    next.no_bad();
    assert!(status.success(), "{stderr}");
    let (after, events_after) = assert_consistent(&r, &cluster, prefix, "after the next writer");
    assert!(after.journal.seq > doc.journal.seq);
    assert!(match_acks(&next, &events_after).is_empty());
    println!(
        "{KILLS} writers killed: {mid_call} inside a call, {answer_lost} after their change committed and before they \
         reported it; {} events, {acked} acknowledged writes; {:?}",
        events.len(),
        started.elapsed()
    );
}
