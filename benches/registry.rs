//! Registry benchmarks: allocation and release with 10, 1,000 and 10,000 entries.
//!
//! A small timing harness (medians of repeated runs) rather than criterion, so that each figure
//! is printed beside baselines measured in the same run on the same disk:
//! - `fsync`: write 128 bytes to a small file and `sync_all` it (the floor of any durable commit);
//! - `parse`: `serde_json` parse of the registry document of that size (the floor of reading it);
//! - `io floor`: the I/O of one commit of a document of that size without any registry logic
//!   (temp file + fsync, rename, folder fsync, log append + fsync).
//!
//! Figures (targets from the foundation issue):
//! - (a) allocation computed: pure `alloc::assign` on the occupied set, no I/O (< 1 ms at 10,000);
//! - (b) commit with fsync: a full `Registry::reserve` through the file store (< 5 ms at 1,000);
//! - (c) release: a full `Registry::release` through the file store;
//! - plus `preview` (read-only, shared lock) and `usage` (pool usage of the data source).
//!
//! Run with `cargo bench --bench registry`. Set `REGISTRY_BENCH_QUICK=1` for fewer iterations,
//! `REGISTRY_BENCH_DIR=/dev/shm` to measure on a tmpfs (CPU cost without the disk),
//! `REGISTRY_BENCH_PARTS=1` to also print the cost of serializing, cloning and reading the
//! document (where a commit's CPU time goes).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homelab::audit::{Actor, Client};
use homelab::registry::file::FileStore;
use homelab::registry::{
    alloc, Allocation, Document, Entry, Holder, LabRecord, Occupied, Pools, Registry, Status,
    SystemClock, Wants, FORMAT_VERSION,
};
use homelab::settings::{validate, RawSettings};
use time::OffsetDateTime;

/// Four disjoint pools of 65,536 slots each (the mgmt pool is not used by these allocations).
fn large_pools() -> Pools {
    let raw = RawSettings {
        host_pool: Some("10.0.0.0/8".into()),
        host_prefix: Some(24),
        pod_pool: Some("100.64.0.0/10".into()),
        pod_prefix: Some(26),
        service_pool: Some("172.16.0.0/12".into()),
        service_prefix: Some(28),
        mgmt_pool: Some("192.168.0.0/16".into()),
        mgmt_prefix: Some(24),
        ..Default::default()
    };
    validate(&raw).expect("bench pools are valid").pools
}

/// A document of `n` allocated entries, each holding slot `i` of every pool.
fn document(pools: &Pools, n: usize) -> Document {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let mut doc = Document::default();
    assert_eq!(doc.version, FORMAT_VERSION);
    for i in 0..n as u64 {
        let name = format!("i{i:05}");
        let entry = Entry {
            name: name.clone(),
            allocation: Allocation {
                subnet: pools.host.slot(i),
                pod_cidr: pools.pod.slot(i),
                service_cidr: pools.service.slot(i),
                mgmt_cidr: None,
            },
            backend: "netns".into(),
            status: Status::Allocated,
            created_at: now,
            federated: vec![],
            reservation: None,
            lab: Some(LabRecord {
                control_planes: 1,
                workers: 2,
                settings: Default::default(),
                host: None,
            }),
            // As the provider writes them: every entry carries its workspace and run.
            owner: Some(homelab::registry::Workspace {
                host: "lab-host".into(),
                dir: "/home/alice/labs/main".into(),
                name: "default".into(),
            }),
            run: Some(format!("{i:016x}")),
            creating: None,
        };
        doc.instances.insert(name, entry);
    }
    doc
}

fn occupied(doc: &Document) -> Vec<Occupied> {
    doc.instances
        .values()
        .flat_map(|e| {
            e.allocation.iter().map(|(kind, cidr)| Occupied {
                cidr,
                holder: Holder::Instance {
                    name: e.name.clone(),
                    kind,
                    status: "allocated".into(),
                },
            })
        })
        .collect()
}

/// Median and 90th percentile of `iters` runs of `f`.
fn measure(iters: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 9 / 10])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fsync_baseline(dir: &Path, iters: usize) -> Duration {
    let path = dir.join("fsync-probe");
    let (median, _) = measure(iters, || {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&[b'x'; 128]).unwrap();
        f.sync_all().unwrap();
    });
    fs::remove_file(&path).unwrap();
    median
}

/// The I/O a commit of `doc` cannot avoid, without any registry logic: write the document's
/// bytes to a temp file, fsync, rename it over the old one, fsync the folder, append one event
/// line to a log and fsync it.
fn commit_floor(dir: &Path, doc: &[u8], iters: usize) -> Duration {
    let target = dir.join("floor.json");
    let tmp = dir.join("floor.json.tmp");
    let log = dir.join("floor.jsonl");
    let line = [b'e'; 400];
    let (median, _) = measure(iters, || {
        let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&tmp).unwrap();
        f.write_all(doc).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::rename(&tmp, &target).unwrap();
        fs::File::open(dir).unwrap().sync_all().unwrap();
        let mut l = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        l.write_all(&line).unwrap();
        l.sync_all().unwrap();
    });
    for p in [&target, &log] {
        fs::remove_file(p).unwrap();
    }
    median
}

fn verdict(value: Duration, target_ms: f64) -> &'static str {
    if ms(value) < target_ms {
        "meets target"
    } else {
        "MISSES target"
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need: run quickly.
    let quick = std::env::var_os("REGISTRY_BENCH_QUICK").is_some()
        || !std::env::args().any(|a| a == "--bench");
    let scale = if quick { 5 } else { 1 };
    let pools = large_pools();
    // `REGISTRY_BENCH_DIR` puts the registries elsewhere (a tmpfs such as /dev/shm shows the
    // CPU cost alone, fsync being free there).
    let home = match std::env::var_os("REGISTRY_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let fsync = fsync_baseline(home.path(), 200 / scale);
    println!("registry benchmarks ({} iterations)", if quick { "quick" } else { "full" });
    println!(
        "registries in {}; baseline fsync of a 128-byte file on the same disk: {:.3} ms (median)",
        home.path().display(),
        ms(fsync)
    );
    println!();
    println!(
        "{:>7} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} {:>7} {:>7} | {:>9} {:>7} | {:>9} {:>8}",
        "entries", "assign", "p90", "preview", "parse", "reserve", "io floor", "/floor", "/fsync", "release", "/floor", "usage", "doc KiB"
    );
    let mut summary = Vec::new();
    for &n in &[10usize, 1_000, 10_000] {
        let doc = document(&pools, n);
        let bytes = {
            let mut b = serde_json::to_vec_pretty(&doc).unwrap();
            b.push(b'\n');
            b
        };
        let dir = home.path().join(format!("home-{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("instances.json"), &bytes).unwrap();

        let occ = occupied(&doc);
        let iters = |small: usize, large: usize| (if n >= 10_000 { large } else { small } / scale).max(3);
        let floor = commit_floor(&dir, &bytes, iters(60, 10));
        let (assign, assign_p90) = measure(iters(500, 100), || {
            let a = alloc::assign(&pools, &Wants::auto(false), &occ, None).unwrap();
            std::hint::black_box(a);
        });
        let (parse, _) = measure(iters(200, 20), || {
            let d: Document = serde_json::from_slice(&bytes).unwrap();
            std::hint::black_box(d);
        });

        if std::env::var_os("REGISTRY_BENCH_PARTS").is_some() {
            let (ser, _) = measure(iters(100, 10), || {
                std::hint::black_box(serde_json::to_vec_pretty(&doc).unwrap());
            });
            let (ser_compact, _) = measure(iters(100, 10), || {
                std::hint::black_box(serde_json::to_vec(&doc).unwrap());
            });
            let (clone, _) = measure(iters(100, 10), || {
                std::hint::black_box(doc.clone());
            });
            let (read, _) = measure(iters(100, 10), || {
                std::hint::black_box(fs::read(dir.join("instances.json")).unwrap());
            });
            println!(
                "  parts at {n}: serialize pretty {:.3} ms, compact {:.3} ms, clone {:.3} ms, read file {:.3} ms",
                ms(ser),
                ms(ser_compact),
                ms(clone),
                ms(read)
            );
        }
        let registry = Registry::new(
            Arc::new(FileStore::new(&dir)),
            pools,
            Duration::from_secs(3600),
            Arc::new(SystemClock),
            Actor::current(),
            Client::provider("bench"),
        );
        let (preview, _) = measure(iters(200, 10), || {
            let p = registry.preview("bench", &Wants::auto(false), &[]).unwrap();
            std::hint::black_box(p);
        });
        let (usage, _) = measure(iters(50, 5), || {
            std::hint::black_box(registry.usage(&doc));
        });
        // Reserve then release the same name: the registry keeps its size between samples.
        let mut reserves = Vec::new();
        let mut releases = Vec::new();
        for _ in 0..iters(60, 10) {
            let t = Instant::now();
            registry.reserve("bench", &Wants::auto(false), "netns", &[]).unwrap();
            reserves.push(t.elapsed());
            let t = Instant::now();
            registry.release("bench").unwrap().expect("bench was reserved");
            releases.push(t.elapsed());
        }
        reserves.sort();
        releases.sort();
        let reserve = reserves[reserves.len() / 2];
        let release = releases[releases.len() / 2];
        registry.verify_events().expect("event chain verifies after the bench");
        println!(
            "{:>7} | {:>7.3}ms {:>7.3}ms | {:>7.3}ms {:>7.3}ms | {:>7.3}ms {:>7.3}ms {:>6.2}x {:>6.1}x | {:>7.3}ms {:>6.2}x | {:>7.3}ms {:>8}",
            n,
            ms(assign),
            ms(assign_p90),
            ms(preview),
            ms(parse),
            ms(reserve),
            ms(floor),
            ms(reserve) / ms(floor),
            ms(reserve) / ms(fsync),
            ms(release),
            ms(release) / ms(floor),
            ms(usage),
            bytes.len() / 1024
        );
        if n == 10_000 {
            summary.push(format!(
                "(a) allocation computed at 10,000 entries: {:.3} ms, target < 1 ms: {}",
                ms(assign),
                verdict(assign, 1.0)
            ));
        }
        if n == 1_000 {
            summary.push(format!(
                "(b) commit with fsync at 1,000 entries: {:.3} ms, target < 5 ms: {}; the same I/O without registry logic \
                 (io floor) takes {:.3} ms here, so the registry adds {:.3} ms ({:.2}x the floor, {:.1}x one small-file fsync)",
                ms(reserve),
                verdict(reserve, 5.0),
                ms(floor),
                ms(reserve) - ms(floor),
                ms(reserve) / ms(floor),
                ms(reserve) / ms(fsync),
            ));
            summary.push(format!(
                "(c) release at 1,000 entries: {:.3} ms ({:.2}x the io floor, {:.1}x one small-file fsync)",
                ms(release),
                ms(release) / ms(floor),
                ms(release) / ms(fsync)
            ));
        }
    }
    println!();
    for line in summary {
        println!("{line}");
    }
}
