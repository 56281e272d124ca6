//! The Vagrant backend's rendering, checked against the real tools: every Vagrantfile shape
//! (1–3 control planes × 0–10 workers × both hypervisors × provisioning on/off) passes the real
//! `vagrant validate`; renderings match the committed snapshots; hostile strings in the box,
//! box version and Kubernetes version come out as the same strings in Ruby and in the shell,
//! never as code; every generated script passes `shellcheck`.
//!
//! Snapshots live in tests/fixtures/vagrant/snapshots/; `UPDATE_SNAPSHOTS=1` rewrites them.

use std::path::{Path, PathBuf};
use std::process::Command;

use homelab::backend::vagrant::{
    render_scripts, render_vagrantfile, ruby_str, sh_str, Hypervisor, LibvirtDriver, RenderError,
    RenderTarget,
};

use crate::util::vagrant::{
    ensure_vm_packages, repo_root, test_options, vagrant_cli, vagrant_spec, write_rendered,
};

const LIBVIRT: RenderTarget = RenderTarget {
    hypervisor: Hypervisor::Libvirt,
    libvirt_driver: LibvirtDriver::Qemu,
};
const VIRTUALBOX: RenderTarget = RenderTarget {
    hypervisor: Hypervisor::VirtualBox,
    libvirt_driver: LibvirtDriver::Kvm,
};

/// Strings that would run code if they reached Ruby or a shell unescaped. Each also writes a
/// canary file, whose absence afterwards proves nothing ran.
fn hostile_strings(canary: &Path) -> Vec<String> {
    let c = canary.display();
    vec![
        format!("x\"; File.write(\"{c}\", \"ruby\"); \""),
        format!("#{{File.write(\"{c}\", \"interp\")}}"),
        format!("a\\\"; system(\"touch {c}\"); #"),
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("'; touch {c}; '"),
        format!("line1\nFile.write(\"{c}\", \"newline\")\n"),
        "back\\slash\\\\ and \\n and \\#{x}".to_string(),
        "tab\tcr\rnul-free \u{7f} é ü 日本".to_string(),
        format!("%q(x) %x(touch {c}) <<EOF\ntouch {c}\nEOF"),
    ]
}

fn shellcheck(files: &[PathBuf]) {
    let out = Command::new("shellcheck")
        .args(["--severity=style", "--shell=bash"])
        .args(files)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every shape of Vagrantfile the backend can write passes the real `vagrant validate`:
/// libvirt ones with the libvirt provider's own checks (vagrant-libvirt validates its options,
/// and `--ignore-provider` would skip them), VirtualBox ones with `--ignore-provider` (no
/// VirtualBox here).
///
/// Vagrant costs about 2 s of CPU per file, so the 132 shapes are not all run through it by
/// default: the real CLI validates, per hypervisor and provisioning mode, the largest files
/// (1 and 3 control planes, 10 workers) and the smallest; every other file is then
/// shown to be made of exactly the same blocks (same head, a subset of the same
/// `config.vm.define` blocks, byte for byte), so every machine definition of every shape has
/// been through Vagrant; Ruby compiles all 132. `HOMELAB_FULL_VALIDATE=1` runs all 132
/// through the CLI instead (about 5 minutes here).
#[test]
fn every_vagrantfile_shape_passes_real_vagrant_validate() {
    ensure_vm_packages();
    let tmp = tempfile::tempdir().unwrap();
    let full = std::env::var_os("HOMELAB_FULL_VALIDATE").is_some();
    let mut files = Vec::new();
    let mut to_validate = Vec::new();
    for (target, subnet) in [(LIBVIRT, "10.77.1.0/24"), (VIRTUALBOX, "192.168.56.0/24")] {
        for provision in [false, true] {
            let spec_of = |cps, workers| {
                vagrant_spec(
                    "acme",
                    subnet,
                    "10.78.1.0/24",
                    cps,
                    workers,
                    test_options("bento/ubuntu-24.04", provision),
                )
            };
            // The control planes of an instance with several carry keepalived: the blocks of
            // both kinds of instance come from the largest of each.
            let largest = render_vagrantfile(&spec_of(3, 10), target).unwrap();
            let (head, mut blocks) = split_blocks(&largest);
            let single = render_vagrantfile(&spec_of(1, 10), target).unwrap();
            let (single_head, single_blocks) = split_blocks(&single);
            assert_eq!(single_head, head);
            blocks.extend(single_blocks);
            for cps in 1..=3 {
                for workers in 0..=10 {
                    let spec = spec_of(cps, workers);
                    let name = format!(
                        "{}-{cps}cp-{workers}w-{}",
                        target.hypervisor.as_str(),
                        if provision { "prov" } else { "plain" }
                    );
                    let dir = tmp.path().join(&name);
                    write_rendered(&spec, target, &dir);
                    let text = std::fs::read_to_string(dir.join("Vagrantfile")).unwrap();
                    let (h, bs) = split_blocks(&text);
                    assert_eq!(
                        h, head,
                        "{name}: head differs from the validated largest file"
                    );
                    assert_eq!(bs.len(), (cps + workers) as usize, "{name}");
                    for b in &bs {
                        assert!(
                            blocks.contains(b),
                            "{name}: block not in the validated file:\n{b}"
                        );
                    }
                    files.push(dir.join("Vagrantfile"));
                    let boundary = [(1, 0), (1, 10), (3, 10)].contains(&(cps, workers));
                    if full || boundary {
                        to_validate.push((target, dir));
                    }
                }
            }
        }
    }
    assert_eq!(files.len(), 3 * 11 * 2 * 2);
    ruby_compiles(&files);
    std::thread::scope(|s| {
        let chunks: Vec<_> = to_validate.chunks(to_validate.len().div_ceil(2)).collect();
        for chunk in chunks {
            s.spawn(move || {
                for (target, dir) in chunk {
                    let out = validate(*target, dir);
                    assert!(
                        out.status.success(),
                        "vagrant validate failed for {}:\n{}{}",
                        dir.display(),
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            });
        }
    });
}

/// The real `vagrant validate` the way the tests run it for a hypervisor.
fn validate(target: RenderTarget, dir: &Path) -> std::process::Output {
    match target.hypervisor {
        Hypervisor::Libvirt => vagrant_cli(
            &["validate"],
            dir,
            &[("VAGRANT_DEFAULT_PROVIDER", "libvirt")],
        ),
        Hypervisor::VirtualBox => vagrant_cli(&["validate", "--ignore-provider"], dir, &[]),
    }
}

/// A Vagrantfile as its head (everything before the first `config.vm.define`) and its
/// `config.vm.define … end` blocks.
fn split_blocks(text: &str) -> (String, Vec<String>) {
    let mut head = String::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("  config.vm.define ") {
            current = Some(String::new());
        }
        match current.as_mut() {
            Some(b) => {
                b.push_str(line);
                b.push('\n');
                if line == "  end" {
                    blocks.push(current.take().unwrap());
                }
            }
            None if blocks.is_empty() => {
                head.push_str(line);
                head.push('\n');
            }
            None => {}
        }
    }
    (head, blocks)
}

/// Ruby compiles every file (syntax), in one process.
fn ruby_compiles(files: &[PathBuf]) {
    let out = Command::new("ruby")
        .args([
            "-e",
            "ARGV.each { |f| RubyVM::InstructionSequence.compile_file(f) }",
        ])
        .args(files)
        .output()
        .expect("run ruby");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `vagrant validate` really fails on a broken Vagrantfile (so the test above can fail): an
/// unknown vagrant-libvirt option and a Ruby syntax error are both refused.
#[test]
fn vagrant_validate_refuses_broken_vagrantfiles() {
    ensure_vm_packages();
    let tmp = tempfile::tempdir().unwrap();
    let spec = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        0,
        test_options("b", false),
    );
    let good = render_vagrantfile(&spec, LIBVIRT).unwrap();
    let cases = [
        (
            "unknown-option",
            good.replace(
                "libvirt.cpus = 1",
                "libvirt.cpus = 1\n    libvirt.no_such_option = 1",
            ),
        ),
        ("syntax", good.replace("do |node|", "do |node")),
    ];
    for (name, text) in cases {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Vagrantfile"), text).unwrap();
        let out = validate(LIBVIRT, &d);
        assert!(
            !out.status.success(),
            "{name} was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let bad = tmp.path().join("bad.rb");
    std::fs::write(&bad, "x = (\n").unwrap();
    let out = Command::new("ruby")
        .args([
            "-e",
            "ARGV.each { |f| RubyVM::InstructionSequence.compile_file(f) }",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the Ruby syntax check accepts broken code"
    );
}

fn snapshot_cases() -> Vec<(&'static str, homelab::backend::LabSpec, RenderTarget)> {
    vec![
        (
            "libvirt-1cp-0w-plain",
            vagrant_spec(
                "acme",
                "10.77.1.0/24",
                "10.78.1.0/24",
                1,
                0,
                test_options("homelab-test", false),
            ),
            LIBVIRT,
        ),
        (
            "libvirt-3cp-2w-prov",
            vagrant_spec("globex", "10.77.2.0/24", "10.78.2.0/24", 3, 2, {
                let mut o = test_options("bento/ubuntu-24.04", true);
                o.box_version = Some(">= 202502.21.0".into());
                o.cpus = 2;
                o.memory_mb = 2048;
                o
            }),
            RenderTarget {
                hypervisor: Hypervisor::Libvirt,
                libvirt_driver: LibvirtDriver::Kvm,
            },
        ),
        (
            "virtualbox-1cp-1w-prov",
            vagrant_spec(
                "initech",
                "192.168.56.0/24",
                "10.78.3.0/24",
                1,
                1,
                test_options("bento/ubuntu-24.04", true),
            ),
            VIRTUALBOX,
        ),
    ]
}

fn check_snapshot(name: &str, actual: &str) {
    let path = repo_root()
        .join("tests/fixtures/vagrant/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "rendering of {name} changed; if intended, rerun with UPDATE_SNAPSHOTS=1 and review the diff"
    );
}

/// Renderings are pinned by committed snapshots, and rendering twice gives the same bytes.
#[test]
fn rendering_matches_committed_snapshots() {
    for (name, spec, target) in snapshot_cases() {
        let vf = render_vagrantfile(&spec, target).unwrap();
        assert_eq!(
            vf,
            render_vagrantfile(&spec, target).unwrap(),
            "{name} is not deterministic"
        );
        assert!(
            vf.starts_with("# Generated by terraform-provider-homelab"),
            "{vf}"
        );
        assert!(vf.contains("Do not edit"), "{vf}");
        check_snapshot(&format!("{name}.Vagrantfile"), &vf);
        for (script, content) in render_scripts(&spec).unwrap() {
            check_snapshot(&format!("{name}.{script}"), &content);
        }
    }
}

/// The libvirt Vagrantfile isolates everything: the host-only network and the instance's
/// own management network both have forward mode "none" and per-instance names.
#[test]
fn libvirt_rendering_isolates_both_networks_per_instance() {
    let spec = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        1,
        test_options("b", false),
    );
    let vf = render_vagrantfile(&spec, LIBVIRT).unwrap();
    assert!(
        vf.contains(r#"libvirt.management_network_name = "homelab-acme-mgmt""#),
        "{vf}"
    );
    assert!(
        vf.contains(r#"libvirt.management_network_address = "10.78.1.0/24""#),
        "{vf}"
    );
    assert!(
        vf.contains(r#"libvirt.management_network_mode = "none""#),
        "{vf}"
    );
    assert_eq!(
        vf.matches(r#"libvirt__forward_mode: "none""#).count(),
        2,
        "{vf}"
    );
    assert_eq!(
        vf.matches(r#"libvirt__network_name: "homelab-acme""#)
            .count(),
        2,
        "{vf}"
    );
    assert!(vf.contains(r#"libvirt.driver = "qemu""#), "{vf}");
    let mut no_mgmt = spec.clone();
    no_mgmt.mgmt_cidr = None;
    assert!(matches!(
        render_vagrantfile(&no_mgmt, LIBVIRT),
        Err(RenderError::NoMgmtNetwork(_))
    ));
    // VirtualBox needs no management network: its NAT adapter is per VM.
    assert!(render_vagrantfile(&no_mgmt, VIRTUALBOX).is_ok());
}

/// Hostile strings come out of the Vagrantfile as exactly themselves: Ruby evaluates every
/// rendered literal back to the input, the real `vagrant validate` accepts a Vagrantfile
/// whose box and box version are hostile, and no canary file appears.
#[test]
fn hostile_strings_cannot_escape_the_vagrantfile() {
    ensure_vm_packages();
    let tmp = tempfile::tempdir().unwrap();
    let canary = tmp.path().join("canary");
    let hostile = hostile_strings(&canary);

    // Ruby reads each literal back as the very same bytes.
    let mut program = String::from("vals = []\n");
    for h in &hostile {
        program.push_str(&format!("vals << {}\n", ruby_str(h)));
    }
    program.push_str("vals.each { |v| $stdout.write(v.unpack1('H*') + \"\\n\") }\n");
    let rb = tmp.path().join("roundtrip.rb");
    std::fs::write(&rb, &program).unwrap();
    let out = Command::new("ruby").arg(&rb).output().expect("ruby");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let want: Vec<String> = hostile.iter().map(|h| hex::encode(h.as_bytes())).collect();
    assert_eq!(got, want, "Ruby did not read the literals back unchanged");

    // Whole Vagrantfiles with hostile values (box, box version, and the Kubernetes version in
    // the scripts) add no line, compile, and — for one string of each kind of attack (quote
    // break-out, interpolation, newline) — go through the real vagrant validate. A hostile box
    // version may be refused by Vagrant's version parser; nothing may run either way.
    let benign = render_vagrantfile(
        &vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 1, 1, {
            let mut o = test_options("b", true);
            o.box_version = Some("1".into());
            o
        }),
        LIBVIRT,
    )
    .unwrap();
    let mut files = Vec::new();
    for (i, h) in hostile.iter().enumerate() {
        let mut opts = test_options(h, true);
        opts.kubernetes_version = h.clone();
        opts.box_version = Some(h.clone());
        let spec = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 1, 1, opts.clone());
        let dir = tmp.path().join(format!("all{i}"));
        write_rendered(&spec, LIBVIRT, &dir);
        let vf = std::fs::read_to_string(dir.join("Vagrantfile")).unwrap();
        assert_eq!(
            vf.lines().count(),
            benign.lines().count(),
            "a value added lines:\n{vf}"
        );
        files.push(dir.join("Vagrantfile"));
        if i < 3 {
            // The box alone must validate (any string is a valid box name to Vagrant).
            opts.box_version = None;
            let spec = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 1, 1, opts);
            let bdir = tmp.path().join(format!("box{i}"));
            write_rendered(&spec, LIBVIRT, &bdir);
            let out = validate(LIBVIRT, &bdir);
            assert!(
                out.status.success(),
                "hostile box {h:?} broke the Vagrantfile: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let out = validate(LIBVIRT, &dir);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !text.contains("SyntaxError") && !text.contains("NameError"),
                "{text}"
            );
        }
    }
    ruby_compiles(&files);
    assert!(
        !canary.exists(),
        "a hostile string ran code: {}",
        std::fs::read_to_string(&canary).unwrap_or_default()
    );
}

/// Hostile strings in scripts stay data: each script passes `bash -n`, and its values block,
/// run on its own, sets the variable to exactly the input (and creates no canary).
#[test]
fn hostile_strings_cannot_escape_the_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    let canary = tmp.path().join("canary");
    for h in hostile_strings(&canary) {
        let mut opts = test_options("b", true);
        opts.kubernetes_version = h.clone();
        let spec = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 1, 0, opts);
        let scripts = render_scripts(&spec).unwrap();
        let node = &scripts.iter().find(|(n, _)| n == "node.sh").unwrap().1;
        let line = node
            .lines()
            .find(|l| l.starts_with("K8S_VERSION="))
            .expect("value line");
        assert_eq!(
            line,
            format!("K8S_VERSION={}", sh_str(&h))
                .lines()
                .next()
                .unwrap()
        );
        let values: String = node
            .lines()
            .skip_while(|l| !l.starts_with("# Values for instance"))
            .take_while(|l| !l.starts_with("NODE_IP="))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{values}printf %s \"$K8S_VERSION\""))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            h,
            "value changed on its way through the shell"
        );
        let path = tmp.path().join("node.sh");
        std::fs::write(&path, node).unwrap();
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!canary.exists(), "{h:?} ran code");
    }
}

/// Names are never escaped but validated: a hostile instance or node name is refused.
#[test]
fn hostile_names_are_refused() {
    let mut spec = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        0,
        test_options("b", true),
    );
    spec.instance = "acme\"; system('x')".into();
    assert!(matches!(
        render_vagrantfile(&spec, LIBVIRT),
        Err(RenderError::BadName(_))
    ));
    let mut spec = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        0,
        test_options("b", true),
    );
    spec.nodes[0].name = "acme-cp-1\n".into();
    assert!(matches!(
        render_scripts(&spec),
        Err(RenderError::BadName(_))
    ));
}

/// Every generated provisioning script passes shellcheck (control planes 1–3, workers 0/3,
/// a pinned patch version and a small pod CIDR, with and without mirrors). They cannot run in
/// a VM here (no internet in VMs): `vagrant_provision_scripts` runs them against fake guest
/// tools.
#[test]
fn generated_scripts_pass_shellcheck() {
    ensure_vm_packages();
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (cps, workers, version, pod)) in [
        (1, 0, "1.33", "10.244.0.0/16"),
        (3, 3, "1.33.1", "10.240.0.0/20"),
        (2, 1, "1.32", "10.250.0.0/24"),
        (1, 1, "1.33", "10.244.0.0/16"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut opts = test_options("bento/ubuntu-24.04", true);
        opts.kubernetes_version = version.into();
        if i == 3 {
            opts.cilium_version = "1.16.9".into();
            opts.mirrors.kubernetes_packages = Some("http://mirror.lab/k8s/core:/stable:/".into());
            opts.mirrors.apt_proxy = Some("http://mirror.lab:3142".into());
            opts.mirrors.images = Some("https://registry.lab:5000".into());
            opts.mirrors.cilium_cli = Some("http://mirror.lab/cilium-cli".into());
        }
        let mut spec = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", cps, workers, opts);
        spec.pod_cidr = pod.parse().unwrap();
        for (name, content) in render_scripts(&spec).unwrap() {
            assert!(
                content.contains(&format!("POD_CIDR='{pod}'")) || name == "node.sh" || name == "keepalived.sh",
                "{content}"
            );
            let p = tmp.path().join(format!("{i}-{name}"));
            std::fs::write(&p, content).unwrap();
            files.push(p);
        }
    }
    // node.sh and control-plane.sh each time, keepalived.sh for the two with several CPs.
    assert_eq!(files.len(), 10);
    shellcheck(&files);
    // shellcheck really looks: a script with an unquoted expansion fails.
    let bad = tmp.path().join("bad.sh");
    std::fs::write(&bad, "#!/usr/bin/env bash\nx=$1\nrm $x\n").unwrap();
    let out = Command::new("shellcheck").arg(&bad).output().unwrap();
    assert!(
        !out.status.success(),
        "shellcheck accepted an unquoted expansion"
    );
}

/// The control-plane script carries the kubeadm and Cilium settings of the spec.
#[test]
fn control_plane_script_uses_the_instance_cidrs() {
    let mut spec = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        2,
        test_options("b", true),
    );
    spec.pod_cidr = "10.240.0.0/16".parse().unwrap();
    spec.service_cidr = "10.100.0.0/16".parse().unwrap();
    let scripts = render_scripts(&spec).unwrap();
    let cp = &scripts
        .iter()
        .find(|(n, _)| n == "control-plane.sh")
        .unwrap()
        .1;
    for needle in [
        "POD_CIDR='10.240.0.0/16'",
        "SERVICE_CIDR='10.100.0.0/16'",
        "API_ADDRESS='10.77.1.10'",
        "--pod-network-cidr=\"$POD_CIDR\"",
        "--service-cidr=\"$SERVICE_CIDR\"",
        "--apiserver-advertise-address=\"$ADVERTISE_ADDRESS\"",
        "--control-plane-endpoint=\"${API_ADDRESS}:6443\"",
        "--skip-token-print",
        "ipam.mode=cluster-pool",
        "clusterPoolIPv4PodCIDRList={${POD_CIDR}}",
    ] {
        assert!(cp.contains(needle), "missing {needle:?} in:\n{cp}");
    }
    let plain = vagrant_spec(
        "acme",
        "10.77.1.0/24",
        "10.78.1.0/24",
        1,
        2,
        test_options("b", false),
    );
    assert!(render_scripts(&plain).unwrap().is_empty());
    assert!(!render_vagrantfile(&plain, LIBVIRT)
        .unwrap()
        .contains("provision"));
}

/// Several control planes share a virtual IP (.5) that keepalived holds on a healthy one, and
/// the cluster's endpoint is that address; one control plane is its own endpoint.
#[test]
fn several_control_planes_get_a_virtual_ip_endpoint_and_one_does_not() {
    let three = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 3, 1, test_options("bento/ubuntu-24.04", true));
    let scripts: std::collections::BTreeMap<String, String> = render_scripts(&three).unwrap().into_iter().collect();
    let ka = &scripts["keepalived.sh"];
    for needle in ["API_ADDRESS='10.77.1.5'", "PEERS='10.77.1.10 10.77.1.11 10.77.1.12'", "PREFIX='24'", "VRRP_NAME='homelab_acme'"] {
        assert!(ka.contains(needle), "missing {needle:?} in:\n{ka}");
    }
    let cp = &scripts["control-plane.sh"];
    assert!(cp.contains("API_ADDRESS='10.77.1.5'") && cp.contains("ADVERTISE_ADDRESS='10.77.1.10'"), "{cp}");
    assert_eq!(homelab::backend::vagrant::VagrantBackend::api_endpoint(&three).as_deref(), Some("https://10.77.1.5:6443"));
    let one = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 1, 1, test_options("bento/ubuntu-24.04", true));
    let scripts: std::collections::BTreeMap<String, String> = render_scripts(&one).unwrap().into_iter().collect();
    assert!(!scripts.contains_key("keepalived.sh"));
    assert!(scripts["control-plane.sh"].contains("API_ADDRESS='10.77.1.10'"));
    assert_eq!(homelab::backend::vagrant::VagrantBackend::api_endpoint(&one).as_deref(), Some("https://10.77.1.10:6443"));
}
