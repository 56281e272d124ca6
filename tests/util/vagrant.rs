//! Helpers for the Vagrant backend's tests: the packages they need (installed once per test
//! run by `scripts/vm/install.sh`), lab specs with Vagrant options, the FAKE `vagrant`
//! stand-in for orchestration tests, and running the real `vagrant` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use homelab::backend::vagrant::{
    render_scripts, render_vagrantfile, RenderTarget, DEFAULT_KUBERNETES_VERSION,
};
use homelab::backend::{plan_nodes, LabSpec, VagrantOptions};
use homelab::net::{self, Ipv4Net};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Install (once per test process, idempotently) the Debian packages of the Vagrant tests:
/// vagrant, vagrant-libvirt, QEMU, libvirt, debootstrap, shellcheck… Panics with the
/// installer's output when it fails.
pub fn ensure_vm_packages() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let script = repo_root().join("scripts/vm/install.sh");
        let out = Command::new("timeout")
            .args(["600", "bash"])
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("setting up the Vagrant test packages: {e}");
    }
}

/// The FAKE `vagrant` (a shell script standing in for the CLI; see its header).
pub fn fake_vagrant() -> PathBuf {
    repo_root().join("tests/fixtures/vagrant/fake-vagrant")
}

/// A real `vagrant status --machine-readable` sample captured on this kind of machine.
pub fn status_sample(name: &str) -> String {
    let p = repo_root().join("tests/fixtures/vagrant").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Vagrant options for tests: the given box, 1 vCPU, 384 MiB, provisioning as asked.
pub fn test_options(r#box: &str, provision: bool) -> VagrantOptions {
    VagrantOptions {
        r#box: r#box.to_string(),
        box_version: None,
        cpus: 1,
        memory_mb: 384,
        kubernetes_version: DEFAULT_KUBERNETES_VERSION.to_string(),
        provision,
        cilium_version: homelab::backend::vagrant::DEFAULT_CILIUM_VERSION.to_string(),
        mirrors: Default::default(),
    }
}

/// A lab spec for `instance` on `subnet` (gateway .1) with its own management network,
/// `control_planes` + `workers` nodes, and the given Vagrant options.
pub fn vagrant_spec(
    instance: &str,
    subnet: &str,
    mgmt: &str,
    control_planes: u32,
    workers: u32,
    options: VagrantOptions,
) -> LabSpec {
    let subnet: Ipv4Net = subnet.parse().unwrap();
    LabSpec {
        instance: instance.to_string(),
        subnet,
        gateway: net::gateway(&subnet),
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        mgmt_cidr: Some(mgmt.parse().unwrap()),
        nodes: plan_nodes(instance, &subnet, control_planes, workers)
            .expect("subnet holds the nodes"),
        pods_per_node: 0,
        vagrant: Some(options),
    }
}

/// Write what the backend would write for `spec` (Vagrantfile and scripts) into `dir`.
pub fn write_rendered(spec: &LabSpec, target: RenderTarget, dir: &Path) {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("Vagrantfile"),
        render_vagrantfile(spec, target).unwrap(),
    )
    .unwrap();
    for (name, content) in render_scripts(spec).unwrap() {
        std::fs::write(dir.join("scripts").join(name), content).unwrap();
    }
}

/// Run the real `vagrant` CLI once: `vagrant <args>` in `dir`.
pub fn vagrant_cli(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "vagrant"])
        .args(args)
        .current_dir(dir)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vagrant")
}
