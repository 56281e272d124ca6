//! Wall time of `vagrant up` and `vagrant destroy` per node on real VMs (libvirt, QEMU
//! software emulation, inside a private lab namespace: see tests/util/vm.rs), and the
//! provider's overhead on top of the bare commands, as a ratio measured in the same run.
//!
//! Opt-in, since it boots VMs for several minutes:
//!
//! ```text
//! HOMELAB_VM_BENCH=1 cargo bench --bench vagrant            # 1-node labs, 1 round
//! HOMELAB_VM_BENCH=1 HOMELAB_VM_BENCH_NODES=2 HOMELAB_VM_BENCH_ROUNDS=2 cargo bench --bench vagrant
//! ```
//!
//! `HOMELAB_VM_BENCH_LOG=1` prints the provider's log lines (with their times) to stderr, to see
//! where its seconds go.
//!
//! Each round runs, on the same lab: the bare commands (`vagrant up --provider libvirt
//! --no-parallel` then `vagrant destroy -f`) on the Vagrantfile the provider renders, then
//! the provider (`Backend::converge` then `Backend::teardown`) on an instance of the same
//! shape. A warm-up round (not counted) first puts the box image into libvirt's pool.

// The real-VM fixture of the integration tests, shared as is (`vm` finds `super::vagrant`).
#[path = "../tests/util/vagrant.rs"]
#[allow(dead_code)]
mod vagrant;
#[path = "../tests/util/vm.rs"]
#[allow(dead_code)]
mod vm;

use std::time::{Duration, Instant};

use homelab::backend::vagrant::{render_vagrantfile, RenderTarget, VagrantBackend};
use homelab::backend::{Backend, OpControl};

use vagrant::{test_options, vagrant_spec};
use vm::{text, VmLab, TEST_BOX};

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    if std::env::var_os("HOMELAB_VM_BENCH").is_none() {
        println!("vagrant bench: skipped (boots real VMs for minutes); run it with HOMELAB_VM_BENCH=1 cargo bench --bench vagrant");
        return;
    }
    if std::env::var_os("HOMELAB_VM_BENCH_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::stderr).try_init();
    }
    let nodes = env_u32("HOMELAB_VM_BENCH_NODES", 1).max(1);
    let rounds = env_u32("HOMELAB_VM_BENCH_ROUNDS", 1).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let lab = VmLab::start();
    println!("lab ready in {:.1}s", secs(t.elapsed()));
    let cfg = lab.backend_config();
    let target = RenderTarget {
        hypervisor: cfg.hypervisor,
        libvirt_driver: cfg.libvirt_driver,
    };
    let backend = VagrantBackend::new(cfg);
    let ctl = || OpControl::with_timeout(Duration::from_secs(1200));
    let spec = |name: &str, third: u8| {
        vagrant_spec(
            name,
            &format!("10.77.{third}.0/24"),
            &format!("10.78.{third}.0/24"),
            1,
            nodes - 1,
            test_options(TEST_BOX, false),
        )
    };

    // Bare vagrant on the provider's own Vagrantfile, in a folder the provider does not know.
    let bare = |third: u8| -> (Duration, Duration) {
        let s = spec("bare", third);
        let dir = lab.home.join(format!("bare-{third}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Vagrantfile"),
            render_vagrantfile(&s, target).unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        let out = lab.vagrant(
            &dir,
            &["up", "--provider", "libvirt", "--no-parallel"],
            Duration::from_secs(1200),
        );
        let up = t.elapsed();
        assert!(out.status.success(), "bare vagrant up: {}", text(&out));
        let t = Instant::now();
        let out = lab.vagrant(&dir, &["destroy", "-f"], Duration::from_secs(600));
        let destroy = t.elapsed();
        assert!(out.status.success(), "bare vagrant destroy: {}", text(&out));
        std::fs::remove_dir_all(&dir).unwrap();
        (up, destroy)
    };
    let provider = |third: u8| -> (Duration, Duration) {
        let s = spec("prov", third);
        let t = Instant::now();
        let st = rt.block_on(backend.converge(&s, &ctl())).expect("converge");
        let up = t.elapsed();
        assert!(st.healthy(), "{st:?}");
        let t = Instant::now();
        rt.block_on(backend.teardown(&s, &ctl())).expect("teardown");
        (up, t.elapsed())
    };

    let t = Instant::now();
    bare(1);
    println!(
        "warm-up round (box upload into the pool) {:.1}s",
        secs(t.elapsed())
    );

    let mut rows = Vec::new();
    for r in 0..rounds {
        let third = 2 + r as u8;
        let (bu, bd) = bare(third);
        let (pu, pd) = provider(third + 100);
        rows.push((bu, bd, pu, pd));
    }
    println!();
    println!("{nodes} node(s) per lab, libvirt + QEMU (TCG), {rounds} round(s)");
    println!("round  bare up  bare destroy  provider converge  provider teardown  up ratio  destroy ratio");
    for (i, (bu, bd, pu, pd)) in rows.iter().enumerate() {
        println!(
            "{:>5}  {:>6.1}s  {:>11.1}s  {:>16.1}s  {:>16.1}s  {:>8.3}  {:>13.3}",
            i + 1,
            secs(*bu),
            secs(*bd),
            secs(*pu),
            secs(*pd),
            secs(*pu) / secs(*bu),
            secs(*pd) / secs(*bd)
        );
    }
    let n = rows.len() as f64;
    let avg = |f: &dyn Fn(&(Duration, Duration, Duration, Duration)) -> Duration| {
        rows.iter().map(|r| secs(f(r))).sum::<f64>() / n
    };
    let (bu, bd, pu, pd) = (avg(&|r| r.0), avg(&|r| r.1), avg(&|r| r.2), avg(&|r| r.3));
    println!();
    println!(
        "per node: vagrant up {:.1}s, vagrant destroy {:.1}s",
        bu / nodes as f64,
        bd / nodes as f64
    );
    println!(
        "provider overhead: converge/up = {:.3} (+{:.1}s), teardown/destroy = {:.3} (+{:.1}s)",
        pu / bu,
        pu - bu,
        pd / bd,
        pd - bd
    );
}
