//! The Vagrant backend on REAL VMs: libvirt with QEMU software emulation, inside a network
//! namespace this test makes (libvirtd and virtlogd started in it by scripts/vm/lab.sh, the
//! box built locally by scripts/vm/build-box.sh), driven through the `Backend` trait.
//!
//! Two instances, acme and globex, one node each, `provision = false`. Each step is commented
//! in the shape of an acceptance step. Budget: 10 minutes once the box is cached (every
//! operation has its own hard timeout; the lab is torn down on any failure by `VmLab`'s Drop).
//! `HOMELAB_SKIP_VM_TESTS=1 scripts/test.sh` leaves the real-VM tests out (a filter, which the
//! run reports as skipped) on machines that cannot run VMs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use homelab::backend::vagrant::VagrantBackend;
use homelab::backend::{Backend, LabStatus, OpControl};
use homelab::hostnet::Link;

use crate::util::vagrant::{test_options, vagrant_spec};
use crate::util::vm::{step, VmLab, TEST_BOX};

/// Whole-test budget once the box is built (box build and lab start are reported apart):
/// the 10 minutes, plus one for a busy machine; the test runner's own hard stop
/// (.config/nextest.toml) comes after it.
const BUDGET: Duration = Duration::from_secs(660);

fn ctl() -> OpControl {
    OpControl::with_timeout(Duration::from_secs(360))
}

/// Ping each `(interface, target)` once from `machine` in one ssh session: which answered.
fn pings(
    lab: &VmLab,
    dir: &Path,
    machine: &str,
    probes: &[(String, String)],
) -> Vec<(String, String, bool)> {
    let script: String = probes
        .iter()
        .map(|(iface, ip)| {
            // Three tries 0.3 s apart, 2 s for the last answer: an emulated guest on a busy
            // host can be slow to answer the first ARP; a probe that gets nothing costs ~2.6 s.
            // As root: a ping that cannot even open its socket must not pass for isolation.
            format!("if sudo ping -n -c 3 -i 0.3 -W 2 -I {iface} {ip} >/dev/null 2>&1; then echo '{iface} {ip} ok'; else echo '{iface} {ip} no'; fi; ")
        })
        .collect();
    let out = lab.ssh(dir, machine, &script);
    probes
        .iter()
        .map(|(iface, ip)| {
            let ok = out.lines().any(|l| l.trim() == format!("{iface} {ip} ok"));
            (iface.clone(), ip.clone(), ok)
        })
        .collect()
}

/// Whether `ip` answers a ping from `machine` out of `iface`.
fn answers(lab: &VmLab, dir: &Path, machine: &str, iface: &str, ip: &str) -> bool {
    pings(lab, dir, machine, &[(iface.into(), ip.into())])[0].2
}

struct Vm {
    instance: &'static str,
    machine: String,
    dir: std::path::PathBuf,
    addrs: BTreeMap<String, String>,
}

/// Probes from `from` to every address of every VM in `to`, over both of `from`'s interfaces.
fn cross_probes(from: &Vm, to: &[&Vm]) -> Vec<(String, String)> {
    let mut p = Vec::new();
    for iface in from.addrs.keys() {
        for t in to {
            for ip in t.addrs.values() {
                p.push((iface.clone(), ip.clone()));
            }
        }
    }
    p
}

fn assert_isolated(lab: &VmLab, from: &Vm, to: &[&Vm], when: &str) {
    for (iface, ip, ok) in pings(lab, &from.dir, &from.machine, &cross_probes(from, to)) {
        assert!(
            !ok,
            "{when}: {} ({}) reached {ip} over {iface}",
            from.machine, from.instance
        );
    }
}

#[tokio::test]
#[ignore = "trait-level twin of acceptance_vagrant (which drives the same lab through Terraform in every run); \
            run it with `cargo nextest run --run-ignored only vagrant_vms` when changing the backend"]
async fn real_vms_acme_and_globex_are_isolated_scale_federate_and_leave_nothing() {
    // Vagrant's output, as the provider logs it, with times: shown when the test fails.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_test_writer()
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let setup = Instant::now();
    let lab = VmLab::start();
    eprintln!(
        "lab set-up (packages, box, daemons, box add): {:.1}s",
        setup.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let backend = VagrantBackend::new(lab.backend_config());
    backend.preflight().await.expect("preflight inside the lab");

    let acme0 = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        0,
        test_options(TEST_BOX, false),
    );
    let acme1 = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        1,
        test_options(TEST_BOX, false),
    );
    let globex = vagrant_spec(
        "globex",
        "10.77.2.0/24",
        "10.78.2.0/24",
        1,
        0,
        test_options(TEST_BOX, false),
    );
    let acme_dir = backend.instance_dir("acme").unwrap();
    let globex_dir = backend.instance_dir("globex").unwrap();

    // Step 1 (create + read): acme with one node.
    step(t0, BUDGET, "create acme (1 node)");
    let st = backend
        .converge(&acme0, &ctl())
        .await
        .expect("converge acme");
    assert!(st.healthy(), "{st:?}");
    let boot_id = lab.ssh(
        &acme_dir,
        "acme-cp-1",
        "cat /proc/sys/kernel/random/boot_id",
    );
    let cp_uuid = lab.virsh(&["domuuid", "homelab-acme-cp-1"]);

    // Step 2 (create + update, concurrently): globex appears while acme goes 0 -> 1 worker.
    // The first VM is not touched: same libvirt domain, same boot.
    step(t0, BUDGET, "create globex and scale acme to 1 worker, concurrently");
    let (c1, c2) = (ctl(), ctl());
    let (g, a) = tokio::join!(
        backend.converge(&globex, &c1),
        backend.converge(&acme1, &c2)
    );
    let (g, a) = (g.expect("converge globex"), a.expect("converge acme 0->1"));
    assert!(g.healthy() && a.healthy(), "{g:?} {a:?}");
    assert_eq!(
        lab.ssh(
            &acme_dir,
            "acme-cp-1",
            "cat /proc/sys/kernel/random/boot_id"
        ),
        boot_id
    );
    assert_eq!(lab.virsh(&["domuuid", "homelab-acme-cp-1"]), cp_uuid);
    let mut domains = lab.domains();
    domains.sort();
    assert_eq!(
        domains,
        [
            "homelab-acme-cp-1",
            "homelab-acme-worker-1",
            "homelab-globex-cp-1"
        ]
    );

    // Step 3 (read): every network of both instances is isolated; nothing is healthy by
    // accident: observe agrees.
    step(t0, BUDGET, "check networks and observe");
    let mut nets = lab.networks();
    nets.sort();
    assert_eq!(
        nets,
        [
            "homelab-acme",
            "homelab-acme-mgmt",
            "homelab-globex",
            "homelab-globex-mgmt"
        ]
    );
    for n in &nets {
        let xml = lab.virsh(&["net-dumpxml", n]);
        assert!(!xml.contains("<forward"), "{n} is not isolated:\n{xml}");
    }
    for (spec, name) in [(&acme1, "acme"), (&globex, "globex")] {
        let seen = backend.observe(spec).await.unwrap();
        assert!(seen.healthy(), "{name}: {seen:?}");
    }
    let bridge_a = backend.host_interface(&acme1).await.unwrap();
    let bridge_g = backend.host_interface(&globex).await.unwrap();
    assert_ne!(bridge_a, bridge_g);

    // Step 4 (isolation audit): from acme's VMs, nothing of globex answers, on any interface
    // pair (host-only and management), and the reverse; guests have no default route. The
    // same pings inside acme succeed, so a failure means isolation, not a broken ping.
    step(t0, BUDGET, "isolation audit");
    let vm = |instance: &'static str, machine: &str, dir: &Path| {
        let (addrs, routes) = lab.addresses_and_routes(dir, machine);
        assert_eq!(addrs.len(), 2, "{machine}: {addrs:?}");
        assert!(
            !routes.contains("default"),
            "{machine} has a default route:\n{routes}"
        );
        Vm {
            instance,
            machine: machine.to_string(),
            dir: dir.to_path_buf(),
            addrs,
        }
    };
    let a_cp = vm("acme", "acme-cp-1", &acme_dir);
    let a_w = vm("acme", "acme-worker-1", &acme_dir);
    let g_cp = vm("globex", "globex-cp-1", &globex_dir);
    assert_eq!(a_cp.addrs["eth1"], "10.77.1.10");
    assert_eq!(g_cp.addrs["eth1"], "10.77.2.10");
    assert!(
        a_cp.addrs["eth0"].starts_with("10.78.1."),
        "{:?}",
        a_cp.addrs
    );
    assert!(
        g_cp.addrs["eth0"].starts_with("10.78.2."),
        "{:?}",
        g_cp.addrs
    );
    // One session from acme-cp-1: its own worker (must answer) and all of globex (must not).
    let inside = [
        ("eth1".to_string(), a_w.addrs["eth1"].clone()),
        ("eth0".to_string(), a_w.addrs["eth0"].clone()),
    ];
    let mut probes = inside.to_vec();
    probes.extend(cross_probes(&a_cp, &[&g_cp]));
    for (iface, ip, ok) in pings(&lab, &acme_dir, "acme-cp-1", &probes) {
        let own = inside.iter().any(|(i, a)| *i == iface && *a == ip);
        if own {
            assert!(
                ok,
                "acme-cp-1 cannot reach its own worker at {ip} over {iface}"
            );
        } else {
            assert!(
                !ok,
                "before federation: acme-cp-1 reached globex at {ip} over {iface}"
            );
        }
    }
    assert_isolated(&lab, &a_w, &[&g_cp], "before federation");
    assert_isolated(&lab, &g_cp, &[&a_cp, &a_w], "before federation");

    // Step 5 (federate): forwarding for this pair in the lab's namespace plus guest routes via
    // each gateway: the host-only addresses reach each other; management networks stay apart.
    step(t0, BUDGET, "federate acme + globex");
    let fwd = backend.forwarding();
    let la = Link {
        instance: "acme".into(),
        iface: bridge_a.clone(),
        subnet: acme1.subnet,
        pod_cidr: None,
    };
    let lg = Link {
        instance: "globex".into(),
        iface: bridge_g.clone(),
        subnet: globex.subnet,
        pod_cidr: None,
    };
    fwd.preflight().await.expect("forwarding preflight");
    fwd.allow_pair(&la, &lg).await.expect("allow pair");
    backend
        .set_guest_route(&acme1, globex.subnet, true, &ctl())
        .await
        .unwrap();
    backend
        .set_guest_route(&globex, acme1.subnet, true, &ctl())
        .await
        .unwrap();
    let routes = backend.guest_routes(&acme1).await.unwrap();
    assert_eq!(
        routes,
        vec![
            ("acme-cp-1".to_string(), globex.subnet),
            ("acme-worker-1".to_string(), globex.subnet)
        ]
    );
    assert!(
        answers(&lab, &acme_dir, "acme-cp-1", "eth1", "10.77.2.10"),
        "federated: acme-cp-1 cannot reach globex-cp-1 at 10.77.2.10"
    );
    assert!(
        answers(&lab, &globex_dir, "globex-cp-1", "eth1", "10.77.1.20"),
        "federated: globex-cp-1 cannot reach acme-worker-1 at 10.77.1.20"
    );
    assert!(
        !answers(&lab, &acme_dir, "acme-cp-1", "eth0", &g_cp.addrs["eth0"]),
        "federation opened the management networks"
    );

    // Step 6 (unfederate, piece by piece): the forwarding rules go first, routes still in
    // place -> no crossing (the pair's rules are the guard); then the routes (removing one
    // that is already gone is fine) -> nothing of federation is left in the guests.
    step(t0, BUDGET, "unfederate");
    fwd.deny_pair(&la, &lg).await.expect("deny pair");
    assert!(!fwd.missing_for_pair(&la, &lg).await.unwrap().is_empty());
    assert_isolated(&lab, &a_cp, &[&g_cp], "forwarding removed, routes kept");
    backend
        .set_guest_route(&acme1, globex.subnet, false, &ctl())
        .await
        .unwrap();
    backend
        .set_guest_route(&globex, acme1.subnet, false, &ctl())
        .await
        .unwrap();
    backend
        .set_guest_route(&globex, acme1.subnet, false, &ctl())
        .await
        .unwrap(); // idempotent
    assert!(backend.guest_routes(&acme1).await.unwrap().is_empty());
    assert_isolated(&lab, &g_cp, &[&a_cp, &a_w], "after federation");

    // Step 7 (read drift): globex's VM powered off behind Vagrant's back is seen as such.
    step(t0, BUDGET, "power off globex-cp-1 out of band");
    lab.virsh(&["destroy", "homelab-globex-cp-1"]);
    let seen = backend.observe(&globex).await.unwrap();
    assert!(seen.exists && !seen.healthy(), "{seen:?}");
    assert_eq!(seen.nodes[0].state, "shutoff");
    assert_eq!(seen.summary(), "shutoff");

    // Step 8 (update): acme back to 0 workers: the worker goes, cp-1 stays as it was.
    step(t0, BUDGET, "scale acme to 0 workers");
    let st = backend
        .converge(&acme0, &ctl())
        .await
        .expect("converge acme 1->0");
    assert!(st.healthy(), "{st:?}");
    assert!(!lab.domains().contains(&"homelab-acme-worker-1".to_string()));
    assert_eq!(
        lab.ssh(
            &acme_dir,
            "acme-cp-1",
            "cat /proc/sys/kernel/random/boot_id"
        ),
        boot_id
    );

    // Step 9 (destroy): both torn down; no domain, no network, no disk of theirs, no folder.
    step(t0, BUDGET, "teardown");
    let (c1, c2) = (ctl(), ctl());
    let (ta, tg) = tokio::join!(
        backend.teardown(&acme0, &c1),
        backend.teardown(&globex, &c2)
    );
    ta.expect("teardown acme");
    tg.expect("teardown globex");
    assert!(lab.domains().is_empty(), "{:?}", lab.domains());
    assert!(lab.networks().is_empty(), "{:?}", lab.networks());
    assert!(lab.instance_volumes().is_empty(), "{:?}", lab.volumes());
    assert!(!acme_dir.exists() && !globex_dir.exists());
    let absent: LabStatus = backend.observe(&acme0).await.unwrap();
    assert!(!absent.exists);
    // Teardown again: already gone is success.
    backend
        .teardown(&acme0, &ctl())
        .await
        .expect("second teardown");
    step(t0, BUDGET, "done");
}
