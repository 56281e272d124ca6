//! A full reachability probe (`homelab_reachability`'s work) of 3 `netns` instances of 2 nodes
//! and 1 pod each: 12 sources, 180 probes. Printed as a median next to a baseline measured in
//! the same run: one ordinary ping round, `ip netns exec <pod> ping -c1 -W1` of the pod's own
//! node (a process pair and one echo: what a probe script pays per probe). Target (issue 12):
//! the full probe under 2 s, so that a `check` block does not make plans slow.
//!
//! Needs root (network namespaces) and `ping` (iputils-ping) for the baseline. Run with
//! `cargo bench --bench reachability`; `HOMELAB_BENCH_ITERS` sets the iterations (default 15).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homelab::backend::netns::NetnsBackend;
use homelab::backend::{plan_nodes, Backend, LabSpec, OpControl};
use homelab::net::{self, Ipv4Net};
use homelab::reachability::{self, Lab, Options};

/// Deletes every namespace of the bench's lab host, whatever happened.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = format!("{}-", self.0);
        for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
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

fn spec(name: &str, i: u8) -> LabSpec {
    let subnet: Ipv4Net = format!("192.168.{}.0/24", 56 + i).parse().unwrap();
    LabSpec {
        instance: name.into(),
        subnet,
        gateway: net::gateway(&subnet),
        pod_cidr: format!("10.{}.0.0/16", 244 + i).parse().unwrap(),
        service_cidr: format!("10.{}.0.0/16", 96 + i).parse().unwrap(),
        mgmt_cidr: None,
        nodes: plan_nodes(name, &subnet, 1, 1).unwrap(),
        pods_per_node: 1,
        vagrant: None,
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("benches/reachability: needs root (network namespaces); skipped");
        return;
    }
    let iters: usize = std::env::var("HOMELAB_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(15).max(1);
    let host = format!("hlbench{}r", std::process::id());
    let _cleanup = Cleanup(host.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let backend = Arc::new(NetnsBackend::new(host.clone()));
    let ctl = OpControl::with_timeout(Duration::from_secs(60));
    let specs: Vec<LabSpec> = ["acme", "globex", "initech"].iter().zip(0u8..).map(|(n, i)| spec(n, i)).collect();
    for s in &specs {
        let status = rt.block_on(backend.converge(s, &ctl)).expect("bring-up");
        assert!(status.healthy(), "{status:#?}");
    }
    let labs: Vec<Lab> = specs.iter().map(|s| Lab { spec: s.clone(), backend: backend.clone(), federated: Vec::new() }).collect();

    // Baseline: one ping round from acme's first pod to its node.
    let pod = format!("{host}-acme-cp-1-pod-1");
    let node_ip = specs[0].nodes[0].ip.to_string();
    let mut base = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let out = Command::new("ip").args(["netns", "exec", &pod, "ping", "-n", "-c1", "-W1", &node_ip]).output().expect("run ping");
        base.push(t.elapsed());
        assert!(out.status.success(), "baseline ping failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let base = median(&mut base);

    let mut full = Vec::new();
    let mut rows = 0;
    for _ in 0..iters {
        let t = Instant::now();
        let m = rt.block_on(reachability::probe(&labs, None, Options::default())).expect("probe");
        full.push(t.elapsed());
        assert!(m.foreign_reachable.is_empty(), "{:?}", m.foreign_reachable);
        rows = m.rows.len();
    }
    let full = median(&mut full);
    let verdict = if full < Duration::from_secs(2) { "met" } else { "MISSED" };
    println!("reachability probe, {iters} iterations each, medians");
    println!("baseline: one ping round (`ip netns exec <pod> ping -c1` of its node): {:.2} ms", ms(base));
    println!(
        "full probe of 3 instances x 2 nodes x 1 pod ({rows} probes from 12 guests): {:.2} ms = {:.2}x the baseline; target < 2000 ms: {verdict}",
        ms(full),
        full.as_secs_f64() / base.as_secs_f64()
    );
    for s in &specs {
        rt.block_on(backend.teardown(s, &ctl)).expect("teardown");
    }
}
