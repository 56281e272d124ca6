//! Bring-up and teardown of one `netns` instance with 1, 3 and 10 nodes, printed as medians and
//! as ratios to a baseline measured in the same run: creating and deleting one bare named
//! namespace with `ip netns add` / `ip netns del` (the least any namespace-based lab can cost).
//! Target (issue 3): bring-up and teardown of a 3-node instance each under 1 s.
//!
//! Each iteration is cold: the lab host namespace is created by the bring-up and removed by the
//! teardown, as for the first and last instance of a host. Needs root. Run with
//! `cargo bench --bench netns`; `HOMELAB_BENCH_ITERS` sets the iterations (default 15).

use std::process::Command;
use std::time::{Duration, Instant};

use homelab::backend::netns::NetnsBackend;
use homelab::backend::{plan_nodes, Backend, LabSpec, OpControl};
use homelab::net::{self, Ipv4Net};

/// Deletes every namespace of the bench's lab host, whatever happened.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = format!("{}-", self.0);
        for entry in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == self.0 || name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        for kind in ["netns", "nft"] {
            let _ = std::fs::remove_file(format!("/run/lock/homelab-{kind}-{}.lock", self.0));
        }
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spec(nodes: u32) -> LabSpec {
    let subnet: Ipv4Net = "192.168.56.0/24".parse().unwrap();
    let control_planes = nodes.min(3);
    LabSpec {
        instance: "bench".into(),
        subnet,
        gateway: net::gateway(&subnet),
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        mgmt_cidr: None,
        nodes: plan_nodes("bench", &subnet, control_planes, nodes - control_planes).unwrap(),
        pods_per_node: 1,
        vagrant: None,
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("benches/netns: needs root (network namespaces); skipped");
        return;
    }
    let iters: usize = std::env::var("HOMELAB_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .max(1);
    let host = format!("hlbench{}", std::process::id());
    let _cleanup = Cleanup(host.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Baseline: one bare namespace, created and deleted.
    let bare = format!("{host}-bare");
    let mut base = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        ip(&["netns", "add", &bare]);
        ip(&["netns", "del", &bare]);
        base.push(t.elapsed());
    }
    let base = median(&mut base);

    let backend = NetnsBackend::new(host.clone());
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    println!("netns backend, {iters} iterations each, medians (cold lab host: created and removed each time)");
    println!(
        "baseline `ip netns add` + `ip netns del` of one bare namespace: {:.1} ms",
        ms(base)
    );
    println!(
        "{:>5}  {:>12} {:>9}  {:>12} {:>9}  target (< 1000 ms each)",
        "nodes", "bring-up ms", "x base", "teardown ms", "x base"
    );
    for nodes in [1u32, 3, 10] {
        let spec = spec(nodes);
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let t = Instant::now();
            let status = rt
                .block_on(backend.converge(&spec, &ctl))
                .expect("bring-up");
            ups.push(t.elapsed());
            assert!(status.healthy(), "{status:#?}");
            let t = Instant::now();
            rt.block_on(backend.teardown(&spec, &ctl))
                .expect("teardown");
            downs.push(t.elapsed());
        }
        let (up, down) = (median(&mut ups), median(&mut downs));
        let verdict = if up < Duration::from_secs(1) && down < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "{nodes:>5}  {:>12.1} {:>8.1}x  {:>12.1} {:>8.1}x  {verdict}",
            ms(up),
            up.as_secs_f64() / base.as_secs_f64(),
            ms(down),
            down.as_secs_f64() / base.as_secs_f64(),
        );
    }
}
