//! The file registry under real OS processes (the test binary re-executed as workers, see
//! `util::worker`): many processes allocating at once against one home, a writer killed with
//! SIGKILL in the middle of a stream of writes, a hundred writers killed at random moments
//! (after each the registry reads and `registry check` is clean or repairable), and the
//! advisory lock of a live process against that of a killed one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fs2::FileExt;
use homelab::audit::{Actor, Client};
use homelab::registry::file::FileStore;
use homelab::registry::{generations, repair};
use homelab::registry::memory::MemoryStore;
use homelab::registry::{
    AllocError, Allocation, Clock, Document, LabRecord, ManualClock, Planned, Registry,
    RegistryError, Status, Store, SystemClock, Wants,
};
use homelab::settings::{validate, RawSettings};

use crate::util::worker::{self, report, Worker};

/// The worker test's full name in this binary.
const WORKER: &str = "registry_processes::worker";
const HOME: &str = "HOMELAB_TEST_REGISTRY_HOME";
const NAME: &str = "HOMELAB_TEST_REGISTRY_NAME";
const GO: &str = "HOMELAB_TEST_REGISTRY_GO";

/// The provider's default pools: 8 host subnets, so 16 processes exhaust the host pool.
fn registry_on(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Registry {
    let pools = validate(&RawSettings::default()).expect("default settings").pools;
    Registry::new(
        store,
        pools,
        Duration::from_secs(24 * 3600),
        clock,
        Actor::current(),
        Client::provider("integration-test"),
    )
}

fn file_registry(home: &Path) -> Registry {
    registry_on(Arc::new(FileStore::new(home)), Arc::new(SystemClock))
}

fn lab() -> LabRecord {
    LabRecord {
        control_planes: 1,
        workers: 2,
        settings: Default::default(),
        host: None,
    }
}

fn worker_command(role: &str, home: &Path) -> std::process::Command {
    let mut c = worker::command(WORKER, role);
    c.env(HOME, home);
    c
}

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
    let home = PathBuf::from(worker::input(HOME));
    match role.as_str() {
        "allocate" => allocate(&home, &worker::input(NAME), Path::new(&worker::input(GO))),
        "stream" => stream(&home),
        "churn" => churn(&home),
        "hold-lock" => hold_lock(&home),
        other => panic!("unknown worker role {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 16 processes allocating at once
// ---------------------------------------------------------------------------------------------

/// Worker: plan and apply `name` (reserve, then claim) as soon as the `go` file appears;
/// report `ok <name> <subnet> <pod> <service>`, `exhausted <name> <message>` or `error …`.
fn allocate(home: &Path, name: &str, go: &Path) {
    let registry = file_registry(home);
    report("ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !go.exists() {
        assert!(Instant::now() < deadline, "no go signal");
        std::thread::sleep(Duration::from_micros(500));
    }
    let outcome = match registry.reserve(name, &Wants::auto(false), "netns", &[]) {
        Ok(Planned::Reserved(e)) => match registry.claim(name, &e.allocation, "netns", lab(), &[]) {
            Ok(e) => format!(
                "ok {name} {} {} {}",
                e.allocation.subnet, e.allocation.pod_cidr, e.allocation.service_cidr
            ),
            Err(err) => format!("error {name} claim: {err}"),
        },
        Ok(other) => format!("error {name} unexpected {other:?}"),
        Err(err @ RegistryError::Alloc { source: AllocError::Exhausted { .. }, .. }) => {
            format!("exhausted {name} {err}")
        }
        Err(err) => format!("error {name} reserve: {err}"),
    };
    report(&outcome);
}

#[test]
fn sixteen_processes_allocating_at_once_get_distinct_networks_or_a_clear_exhausted_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let go = dir.path().join("go");
    let mut workers: Vec<(String, Worker)> = (0..16)
        .map(|i| {
            let name = format!("w{i:02}");
            let mut c = worker_command("allocate", &home);
            c.env(NAME, &name).env(GO, &go);
            (name, Worker::spawn(c))
        })
        .collect();
    // Release them together once every process is up.
    for (_, w) in &mut workers {
        w.wait_for(Duration::from_secs(60), |_| {}, |r| r == "ready");
    }
    fs::write(&go, b"go").unwrap();
    let mut allocated: BTreeMap<String, (Vec<String>, u32)> = BTreeMap::new();
    let mut exhausted = Vec::new();
    for (name, w) in workers {
        let pid = w.pid();
        let (status, reports, stderr) = w.join(Duration::from_secs(60));
        assert!(status.success(), "worker {name} failed: {status}\n{stderr}");
        assert_eq!(reports.len(), 1, "worker {name}: {reports:?}\n{stderr}");
        let words: Vec<&str> = reports[0].splitn(3, ' ').collect();
        assert_eq!(words[1], name, "{reports:?}");
        match words[0] {
            "ok" => {
                let nets = words[2].split(' ').map(String::from).collect();
                allocated.insert(name, (nets, pid));
            }
            "exhausted" => exhausted.push(reports[0].clone()),
            _ => panic!("worker {name}: {}", reports[0]),
        }
    }
    // Exactly the pool's capacity succeeded; the others got a clear "pool exhausted" error.
    assert_eq!(allocated.len(), 8, "allocated: {allocated:?}\nexhausted: {exhausted:?}");
    assert_eq!(exhausted.len(), 8);
    for e in &exhausted {
        assert!(
            e.contains("host_pool 192.168.56.0/21 is full: all 8 /24 slots are taken (held by: w"),
            "{e}"
        );
    }
    // Distinct: no network of one overlaps any network of another, whatever the kinds.
    let nets: Vec<(&str, homelab::net::Ipv4Net)> = allocated
        .iter()
        .flat_map(|(n, (nets, _))| nets.iter().map(move |c| (n.as_str(), c.parse().unwrap())))
        .collect();
    for (i, (na, a)) in nets.iter().enumerate() {
        for (nb, b) in &nets[i + 1..] {
            assert!(!homelab::net::overlaps(a, b), "{na} {a} overlaps {nb} {b}");
        }
    }
    // The file parses and holds exactly what the processes were told.
    let bytes = fs::read(home.join("instances.json")).unwrap();
    let doc: Document = serde_json::from_slice(&bytes).expect("the registry file parses");
    assert_eq!(
        doc.instances.keys().cloned().collect::<BTreeSet<_>>(),
        allocated.keys().cloned().collect::<BTreeSet<_>>()
    );
    for (name, (nets, _)) in &allocated {
        let e = &doc.instances[name];
        assert_eq!(e.status, Status::Allocated);
        let a = e.allocation;
        assert_eq!(
            nets,
            &[a.subnet.to_string(), a.pod_cidr.to_string(), a.service_cidr.to_string()]
        );
    }
    // One event per change: a reserve and an allocate per success, written by that process;
    // nothing for the refused ones.
    let registry = file_registry(&home);
    let events = registry.store().events().unwrap();
    assert_eq!(events.len(), 2 * allocated.len());
    for (name, (_, pid)) in &allocated {
        let mine: Vec<(&str, u32)> = events
            .iter()
            .filter(|e| &e.subject == name)
            .map(|e| (e.action.as_str(), e.actor.pid))
            .collect();
        assert_eq!(mine, [("instance.reserve", *pid), ("instance.allocate", *pid)], "{name}");
    }
    let verified = registry.verify_events().expect("the hash chain verifies");
    assert_eq!(verified.events, 16);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL in the middle of a stream of writes
// ---------------------------------------------------------------------------------------------

const STREAM_NAMES: [&str; 5] = ["acme", "globex", "initech", "hooli", "umbrella"];

/// The `k`-th change of the stream (0-based), exactly one event each: five names are reserved,
/// then claimed, then released, over and over.
fn stream_op(registry: &Registry, k: u64) {
    let name = STREAM_NAMES[(k % 5) as usize];
    match (k / 5) % 3 {
        0 => match registry.reserve(name, &Wants::auto(false), "netns", &[]) {
            Ok(Planned::Reserved(_)) => {}
            other => panic!("change {k}: reserve {name}: {other:?}"),
        },
        1 => {
            let planned = registry.get(name).unwrap().expect("reserved before").allocation;
            registry
                .claim(name, &planned, "netns", lab(), &[])
                .unwrap_or_else(|e| panic!("change {k}: claim {name}: {e}"));
        }
        _ => {
            registry
                .release(name)
                .unwrap_or_else(|e| panic!("change {k}: release {name}: {e}"))
                .expect("allocated before");
        }
    }
}

fn stream_action(k: u64) -> (&'static str, &'static str) {
    let name = STREAM_NAMES[(k % 5) as usize];
    let action = ["instance.reserve", "instance.allocate", "instance.release"][((k / 5) % 3) as usize];
    (action, name)
}

/// Worker: apply the stream's changes one after the other, from wherever the registry is,
/// reporting `done <number of changes>` after each.
fn stream(home: &Path) {
    let registry = file_registry(home);
    let mut k = registry.snapshot().unwrap().journal.seq;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        stream_op(&registry, k);
        k += 1;
        report(&format!("done {k}"));
    }
}

/// What the registry must hold after the first `changes` changes of the stream (names,
/// statuses, networks, and released networks), computed on the in-memory twin.
fn expected_after(changes: u64) -> (BTreeMap<String, (Status, Allocation)>, BTreeMap<String, Allocation>) {
    let clock = Arc::new(ManualClock::at(time::OffsetDateTime::UNIX_EPOCH));
    let registry = registry_on(Arc::new(MemoryStore::new()), clock);
    for k in 0..changes {
        stream_op(&registry, k);
    }
    shape(&registry.snapshot().unwrap())
}

fn shape(doc: &Document) -> (BTreeMap<String, (Status, Allocation)>, BTreeMap<String, Allocation>) {
    (
        doc.instances
            .values()
            .map(|e| (e.name.clone(), (e.status, e.allocation)))
            .collect(),
        doc.released
            .iter()
            .map(|(n, r)| (n.clone(), r.allocation))
            .collect(),
    )
}

/// A small deterministic generator, seeded from the clock (the seed is printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    /// Seeded from the clock, the seed printed (to replay a failure's timing).
    fn seeded() -> Lcg {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        println!("kill timing seed {seed}");
        Lcg(seed)
    }
}

#[test]
fn writer_killed_mid_stream_leaves_a_whole_document_and_the_next_writer_completes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut rng = Lcg::seeded();
    let mut committed = 0u64;
    let mut log_behind = 0;
    for round in 0..5 {
        let mut w = Worker::spawn(worker_command("stream", &home));
        let mut acknowledged = committed;
        let target = committed + 2 + rng.below(12);
        let done = |r: &str| r.strip_prefix("done ").map(|n| n.parse::<u64>().unwrap());
        w.wait_for(
            Duration::from_secs(30),
            |r| acknowledged = acknowledged.max(done(r).unwrap_or(0)),
            |r| done(r).is_some_and(|n| n >= target),
        );
        // Somewhere inside the next write (most of a write is its fsyncs).
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
        for r in w.kill() {
            acknowledged = acknowledged.max(done(&r).unwrap_or(0));
        }
        // The document is whole: it parses, and it is the state before or after one write.
        let bytes = fs::read(home.join("instances.json")).unwrap();
        let doc: Document = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("round {round}: the registry does not parse: {e}"));
        let changes = doc.journal.seq;
        assert!(
            changes == acknowledged || changes == acknowledged + 1,
            "round {round}: the document holds {changes} changes, the writer acknowledged {acknowledged}"
        );
        assert_eq!(shape(&doc), expected_after(changes), "round {round}: after {changes} changes");
        let logged = fs::read_to_string(home.join("events.jsonl")).unwrap().matches('\n').count() as u64;
        assert!(logged == changes || logged + 1 == changes, "round {round}: {logged} events for {changes} changes");
        if logged < changes {
            log_behind += 1;
        }
        // The dead writer's lock is gone with it: the next process takes it at once.
        let lock = File::open(home.join("instances.json.lock")).unwrap();
        lock.try_lock_exclusive()
            .unwrap_or_else(|e| panic!("round {round}: the killed writer's lock still blocks: {e}"));
        FileExt::unlock(&lock).unwrap();
        drop(lock);
        committed = changes;
    }
    println!("{log_behind} of 5 kills landed between the document's rename and the log's append");
    // The next writer (this process) completes the log, then adds its own change.
    let registry = file_registry(&home);
    let started = Instant::now();
    stream_op(&registry, committed);
    assert!(started.elapsed() < Duration::from_secs(5), "the next writer waited {:?}", started.elapsed());
    let events = registry.store().events().unwrap();
    assert_eq!(events.len() as u64, committed + 1, "one event per change");
    for (k, e) in events.iter().enumerate() {
        assert_eq!((e.action.as_str(), e.subject.as_str()), stream_action(k as u64), "event {}", k + 1);
    }
    let verified = registry.verify_events().expect("the hash chain verifies");
    assert_eq!(verified.events, committed + 1);
    let leftovers: Vec<_> = fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// A hundred writers killed with SIGKILL at random moments
// ---------------------------------------------------------------------------------------------

/// Worker: create and release five names over and over, whatever state it finds them in,
/// reporting `done` after each change.
fn churn(home: &Path) {
    let registry = file_registry(home);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0usize;
    while Instant::now() < deadline {
        let name = STREAM_NAMES[i % 5];
        match registry.get(name).unwrap() {
            Some(e) if e.status == Status::Allocated => {
                registry.release(name).unwrap();
            }
            Some(e) => {
                registry.claim(name, &e.allocation, "netns", lab(), &[]).unwrap();
            }
            None => match registry.reserve(name, &Wants::auto(false), "netns", &[]).unwrap() {
                Planned::Reserved(_) => {}
                other => panic!("reserve {name}: {other:?}"),
            },
        }
        i += 1;
        report("done");
    }
}

#[test]
fn hundred_writers_killed_mid_commit_leave_a_registry_that_reads_and_checks_clean_or_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut rng = Lcg::seeded();
    let started = Instant::now();
    let (mut clean, mut repaired, mut noted) = (0, 0, 0);
    for round in 0..100 {
        let mut w = Worker::spawn(worker_command("churn", &home));
        // Kill it at a random moment of its stream of commits (most of a commit is fsyncs).
        w.wait_for(Duration::from_secs(30), |_| {}, |r| r == "done");
        std::thread::sleep(Duration::from_micros(rng.below(6000)));
        w.kill();
        // The registry always reads.
        let registry = file_registry(&home);
        registry
            .snapshot()
            .unwrap_or_else(|e| panic!("round {round}: the registry does not read after a kill: {e}"));
        // `registry check` is clean, or `registry repair` makes it clean.
        let store = FileStore::new(&home);
        let d = repair::diagnose(&store).unwrap();
        if !d.notes.is_empty() {
            noted += 1;
        }
        if d.problems.is_empty() {
            clean += 1;
        } else {
            let client = Client::provider("integration-test");
            repair::repair(&store, SystemClock.now(), &Actor::current(), &client)
                .unwrap_or_else(|e| panic!("round {round}: {:?}: cannot repair: {e}", d.problems));
            let again = repair::diagnose(&store).unwrap();
            assert!(again.problems.is_empty(), "round {round}: still broken after repair: {:?}", again.problems);
            repaired += 1;
        }
    }
    println!("after 100 kills: {clean} clean, {repaired} repaired, {noted} with crash leftovers the next writer tidies; {:?}", started.elapsed());
    // The next writer tidies and commits; the chain verifies; generations stay bounded.
    let registry = file_registry(&home);
    registry.reserve("final", &Wants::auto(false), "netns", &[]).unwrap();
    registry.verify_events().expect("the hash chain verifies");
    let d = repair::diagnose(&FileStore::new(&home)).unwrap();
    assert!(d.problems.is_empty() && d.notes.is_empty(), "{:?} {:?}", d.problems, d.notes);
    assert!(generations::list(&home).len() <= generations::KEEP);
}

// ---------------------------------------------------------------------------------------------
// The lock of a live process, and of a killed one
// ---------------------------------------------------------------------------------------------

/// Worker: hold the registry's exclusive lock until killed.
fn hold_lock(home: &Path) {
    fs::create_dir_all(home).unwrap();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(home.join("instances.json.lock"))
        .unwrap();
    lock.lock_exclusive().unwrap();
    report("locked");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn registry_lock_held_by_a_live_process_blocks_and_by_a_killed_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut holder = Worker::spawn(worker_command("hold-lock", &home));
    holder.wait_for(Duration::from_secs(30), |_| {}, |r| r == "locked");
    let registry = file_registry(&home);
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        let r = registry.reserve("acme", &Wants::auto(false), "netns", &[]);
        let _ = tx.send(r.map(|p| matches!(p, Planned::Reserved(_))).map_err(|e| e.to_string()));
    });
    assert!(
        matches!(rx.recv_timeout(Duration::from_millis(500)), Err(mpsc::RecvTimeoutError::Timeout)),
        "a write went through while another live process held the lock"
    );
    let killed = Instant::now();
    holder.kill();
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the write proceeds once the holder is dead");
    assert_eq!(result, Ok(true));
    assert!(killed.elapsed() < Duration::from_secs(5), "waited {:?}", killed.elapsed());
    writer.join().unwrap();
    assert_eq!(file_registry(&home).verify_events().unwrap().events, 1);
}
