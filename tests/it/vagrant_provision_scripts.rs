//! The generated provisioning scripts (node.sh, control-plane.sh) run here, against FAKE guest
//! tools: no VM can reach the internet here, so apt-get, curl, gpg, containerd, kubeadm,
//! systemctl and cilium are stand-ins on a PATH the test builds (every other command is the
//! real one). Each run happens in a private mount namespace where /etc and /usr/local/bin are
//! overlays on a scratch tmpfs: what the script writes is collected from the overlay, and the
//! host's files are never changed. What is checked is what provisioning does with the
//! offline/mirror options: which URLs it fetches, what apt and containerd are configured with,
//! what a box that already holds the tools skips, and that a bad checksum stops it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use homelab::backend::vagrant::render_scripts;
use homelab::backend::VagrantOptions;

use crate::util::vagrant::{test_options, vagrant_spec};

/// Real commands the scripts use besides the fakes.
const REAL_TOOLS: [&str; 16] = [
    "bash", "cat", "sed", "cut", "install", "mkdir", "rm", "touch", "mktemp", "sha256sum", "tar", "gzip", "cp", "printf", "grep", "ls",
];

/// The fake guest tools. Each logs its name and arguments to $FAKE_LOG, one line per call.
const FAKES: [(&str, &str); 8] = [
    ("modprobe", ""),
    ("sysctl", ""),
    ("swapoff", ""),
    ("systemctl", ""),
    ("apt-mark", ""),
    // apt-get install makes the packages' commands appear (from $FAKE_REPO).
    ("apt-get", r#"if [ "$1" = install ]; then for p in "$@"; do case "$p" in containerd|kubeadm*) n="${p%%=*}"; cp "$FAKE_REPO/$n" "$FAKE_BIN/$n" ;; esac; done; fi"#),
    // curl -o FILE URL, or URL to stdout: files come from $FAKE_FILES by their base name.
    ("curl", r#"out=""; url=""; while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift ;; --proxy) shift ;; -*) ;; *) url="$1" ;; esac; shift; done
f="$FAKE_FILES/${url##*/}"; [ -f "$f" ] || { echo "curl: (22) 404 $url" >&2; exit 22; }
if [ -n "$out" ]; then cp "$f" "$out"; else cat "$f"; fi"#),
    ("gpg", r#"while [ $# -gt 0 ]; do if [ "$1" = -o ]; then cat > "$2"; exit 0; fi; shift; done"#),
];

/// The fake commands a box or a package brings: containerd and kubeadm.
const PACKAGED: [(&str, &str); 2] = [
    ("containerd", r#"if [ "$*" = "config default" ]; then printf 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n  SystemdCgroup = false\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = ""\n'; fi"#),
    ("kubeadm", r#"if [ "$1" = version ]; then echo "${FAKE_KUBEADM_VERSION:-v1.33.2}"; fi"#),
];

fn write_exe(path: &Path, name: &str, body: &str) {
    let text = format!("#!/bin/bash\necho \"{name} $*\" >> \"$FAKE_LOG\"\n{body}\n");
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// One guest: fake tools, a log, and what the script left in /etc and /usr/local/bin.
struct Guest {
    tmp: tempfile::TempDir,
}

/// What a run left.
struct Run {
    ok: bool,
    output: String,
    log: String,
    /// Files written under the overlays, by path (`etc/...`, `usr/local/bin/...`).
    files: BTreeMap<String, String>,
}

impl Run {
    fn file(&self, path: &str) -> &str {
        self.files.get(path).unwrap_or_else(|| panic!("{path} not written; written: {:?}\n{}", self.files.keys(), self.output))
    }
}

impl Guest {
    /// A guest whose box holds `box_tools` of [`PACKAGED`] (and a `cilium` when `cilium`).
    fn new(box_tools: &[&str], cilium: bool) -> Guest {
        let tmp = tempfile::Builder::new().prefix("homelab-provision-").tempdir().unwrap();
        let g = Guest { tmp };
        for d in ["bin", "repo", "files", "out", "scratch"] {
            std::fs::create_dir_all(g.path(d)).unwrap();
        }
        for tool in REAL_TOOLS {
            let real = which(tool);
            std::os::unix::fs::symlink(&real, g.path("bin").join(tool)).unwrap();
        }
        for (name, body) in FAKES {
            write_exe(&g.path("bin").join(name), name, body);
        }
        for (name, body) in PACKAGED {
            write_exe(&g.path("repo").join(name), name, body);
            if box_tools.contains(&name) {
                write_exe(&g.path("bin").join(name), name, body);
            }
        }
        if cilium {
            write_exe(&g.path("bin").join("cilium"), "cilium", "");
        }
        // What the mirrors (or upstream) serve: the package key, and a cilium CLI release
        // whose binary is a fake `cilium` and whose checksum file matches it.
        std::fs::write(g.path("files").join("Release.key"), "FAKE KEY\n").unwrap();
        let rel = g.path("release");
        std::fs::create_dir_all(&rel).unwrap();
        write_exe(&rel.join("cilium"), "cilium", "");
        let tar = g.path("files").join("cilium-linux-amd64.tar.gz");
        assert!(Command::new("tar").arg("-czf").arg(&tar).arg("-C").arg(&rel).arg("cilium").status().unwrap().success());
        let sum = Command::new("sha256sum").arg("cilium-linux-amd64.tar.gz").current_dir(g.path("files")).output().unwrap();
        std::fs::write(g.path("files").join("cilium-linux-amd64.tar.gz.sha256sum"), sum.stdout).unwrap();
        g
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// Run `script` (its content) with `args` in a private mount namespace, /etc and
    /// /usr/local/bin overlaid; `pre` runs there first (as root, before the script).
    fn run(&self, script: &str, args: &[&str], pre: &str, env: &[(&str, &str)]) -> Run {
        let file = self.path("script.sh");
        std::fs::write(&file, script).unwrap();
        let wrapper = r#"set -eu
s="$1"; shift
mount -t tmpfs tmpfs "$s"
for d in etc usr/local/bin; do
  mkdir -p "$s/up/$d" "$s/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$s/up/$d,workdir=$s/work/$d" "/$d"
done
# What every box has.
mkdir -p /etc/modules-load.d /etc/sysctl.d /etc/apt/apt.conf.d /etc/apt/sources.list.d /etc/default
touch /etc/fstab
eval "$PRE"
set +e
PATH="$FAKE_BIN:/usr/local/bin" bash "$@"
rc=$?
cp -a "$s/up/." "$OUT/"
exit "$rc"
"#;
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", wrapper, "wrapper"])
            .arg(self.path("scratch"))
            .arg(&file)
            .args(args)
            .env("PRE", pre)
            .env("OUT", self.path("out"))
            .env("FAKE_BIN", self.path("bin"))
            .env("FAKE_REPO", self.path("repo"))
            .env("FAKE_FILES", self.path("files"))
            .env("FAKE_LOG", self.path("log"))
            .envs(env.iter().copied())
            .output()
            .expect("run unshare");
        let mut files = BTreeMap::new();
        collect(&self.path("out"), &self.path("out"), &mut files);
        Run {
            ok: out.status.success(),
            output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            log: std::fs::read_to_string(self.path("log")).unwrap_or_default(),
            files,
        }
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, files);
        } else if p.is_file() {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            files.insert(rel, std::fs::read_to_string(&p).unwrap_or_else(|_| "<binary>".into()));
        }
    }
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("bash").args(["-c", &format!("command -v {tool}")]).output().unwrap();
    assert!(out.status.success(), "{tool} is not installed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The rendered scripts of a one-control-plane instance with `opts`, by file name.
fn scripts(opts: VagrantOptions) -> BTreeMap<String, String> {
    let spec = vagrant_spec("acme", "10.77.1.0/24", "10.78.1.0/24", 1, 1, opts);
    render_scripts(&spec).unwrap().into_iter().collect()
}

fn mirrored() -> VagrantOptions {
    let mut o = test_options("bento/ubuntu-24.04", true);
    o.cilium_version = "1.16.9".into();
    o.mirrors.kubernetes_packages = Some("http://mirror.lab/k8s/core:/stable:/".into());
    o.mirrors.apt_proxy = Some("http://mirror.lab:3142".into());
    o.mirrors.images = Some("https://registry.lab:5000".into());
    o.mirrors.cilium_cli = Some("http://mirror.lab/cilium-cli".into());
    o
}

const REGISTRIES: [(&str, &str); 4] = [
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("quay.io", "https://quay.io"),
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
];

#[test]
fn node_script_on_a_fresh_box_takes_everything_from_the_mirrors_fake_guest_tools() {
    let g = Guest::new(&[], false);
    let s = scripts(mirrored());
    let r = g.run(&s["node.sh"], &["10.77.1.10"], "", &[]);
    assert!(r.ok, "{}", r.output);
    assert!(r.log.contains("curl -fsSL --proxy http://mirror.lab:3142 http://mirror.lab/k8s/core:/stable:/v1.33/deb/Release.key"), "{}", r.log);
    assert!(!r.log.contains("pkgs.k8s.io"), "{}", r.log);
    assert_eq!(
        r.file("etc/apt/sources.list.d/kubernetes.list"),
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] http://mirror.lab/k8s/core:/stable:/v1.33/deb/ /\n"
    );
    assert_eq!(r.file("etc/apt/keyrings/kubernetes-apt-keyring.gpg"), "FAKE KEY\n");
    assert_eq!(
        r.file("etc/apt/apt.conf.d/90homelab-proxy"),
        "Acquire::http::Proxy \"http://mirror.lab:3142\";\nAcquire::https::Proxy \"http://mirror.lab:3142\";\n"
    );
    let config = r.file("etc/containerd/config.toml");
    assert!(config.contains("config_path = \"/etc/containerd/certs.d\""), "{config}");
    assert!(config.contains("SystemdCgroup = true"), "{config}");
    for (registry, server) in REGISTRIES {
        assert_eq!(
            r.file(&format!("etc/containerd/certs.d/{registry}/hosts.toml")),
            format!("server = \"{server}\"\n\n[host.\"https://registry.lab:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
        );
    }
    assert!(r.log.contains("apt-get install -y -qq containerd"), "{}", r.log);
    assert!(r.log.contains("apt-get install -y -qq kubelet kubeadm kubectl"), "{}", r.log);
    assert_eq!(r.file("etc/default/kubelet"), "KUBELET_EXTRA_ARGS=--node-ip=10.77.1.10\n");
    assert!(r.files.contains_key("etc/homelab/node.done"));
}

#[test]
fn node_script_without_mirrors_uses_the_upstream_sites_fake_guest_tools() {
    let g = Guest::new(&[], false);
    let mut o = test_options("bento/ubuntu-24.04", true);
    o.kubernetes_version = "1.32.4".into();
    let r = g.run(&scripts(o)["node.sh"], &["10.77.1.20"], "", &[]);
    assert!(r.ok, "{}", r.output);
    assert!(r.log.contains("curl -fsSL https://pkgs.k8s.io/core:/stable:/v1.32/deb/Release.key"), "{}", r.log);
    assert!(!r.log.contains("--proxy"), "{}", r.log);
    assert!(r.log.contains("apt-get install -y -qq kubelet=1.32.4-* kubeadm=1.32.4-* kubectl=1.32.4-*"), "{}", r.log);
    assert!(!r.files.contains_key("etc/apt/apt.conf.d/90homelab-proxy"));
    assert!(r.file("etc/containerd/config.toml").contains("config_path = \"\""));
    assert!(!r.files.keys().any(|k| k.starts_with("etc/containerd/certs.d")), "{:?}", r.files.keys());
}

#[test]
fn node_script_on_a_box_that_holds_the_tools_downloads_nothing_fake_guest_tools() {
    let g = Guest::new(&["containerd", "kubeadm"], false);
    let r = g.run(&scripts(mirrored())["node.sh"], &["10.77.1.21"], "", &[("FAKE_KUBEADM_VERSION", "v1.33.2")]);
    assert!(r.ok, "{}", r.output);
    assert!(!r.log.contains("apt-get"), "{}", r.log);
    assert!(!r.log.contains("curl"), "{}", r.log);
    assert!(r.output.contains("kubeadm 1.33.2 already in the box"), "{}", r.output);
    assert!(r.log.contains("apt-mark hold kubelet kubeadm kubectl"), "{}", r.log);
    // containerd is still configured for the mirror.
    assert!(r.files.contains_key("etc/containerd/certs.d/quay.io/hosts.toml"));

    // A kubeadm of another version is replaced by the requested one.
    let g = Guest::new(&["containerd", "kubeadm"], false);
    let mut o = mirrored();
    o.kubernetes_version = "1.32".into();
    let r = g.run(&scripts(o)["node.sh"], &["10.77.1.21"], "", &[("FAKE_KUBEADM_VERSION", "v1.33.2")]);
    assert!(r.ok, "{}", r.output);
    assert!(r.log.contains("http://mirror.lab/k8s/core:/stable:/v1.32/deb/Release.key"), "{}", r.log);
    assert!(r.log.contains("apt-get install -y -qq kubelet kubeadm kubectl"), "{}", r.log);
    assert!(!r.log.contains("apt-get install -y -qq containerd"), "{}", r.log);
}

#[test]
fn node_script_on_a_box_packaged_from_a_set_up_node_still_sets_its_own_address_fake_guest_tools() {
    let g = Guest::new(&["containerd", "kubeadm"], false);
    let pre = "mkdir -p /etc/homelab /etc/default && touch /etc/homelab/node.done && echo KUBELET_EXTRA_ARGS=--node-ip=10.77.1.10 > /etc/default/kubelet";
    let r = g.run(&scripts(mirrored())["node.sh"], &["10.77.1.22"], pre, &[]);
    assert!(r.ok, "{}", r.output);
    assert!(r.output.contains("node already set up"), "{}", r.output);
    assert!(!r.log.contains("modprobe") && !r.log.contains("apt-get"), "{}", r.log);
    assert_eq!(r.file("etc/default/kubelet"), "KUBELET_EXTRA_ARGS=--node-ip=10.77.1.22\n");
    assert!(r.log.contains("systemctl restart kubelet"), "{}", r.log);
}

#[test]
fn control_plane_script_installs_the_pinned_cilium_from_the_cli_mirror_fake_guest_tools() {
    let g = Guest::new(&["containerd", "kubeadm"], false);
    let r = g.run(&scripts(mirrored())["control-plane.sh"], &[], "", &[]);
    assert!(r.ok, "{}", r.output);
    assert!(r.log.contains("curl -fsSL -o "), "{}", r.log);
    assert!(r.log.contains(" http://mirror.lab/cilium-cli/cilium-linux-amd64.tar.gz\n"), "{}", r.log);
    assert!(r.log.contains(" http://mirror.lab/cilium-cli/cilium-linux-amd64.tar.gz.sha256sum\n"), "{}", r.log);
    assert!(!r.log.contains("github.com"), "{}", r.log);
    assert!(r.files.contains_key("usr/local/bin/cilium"), "{:?}", r.files.keys());
    assert!(r.log.contains("cilium install --version 1.16.9 --set ipam.mode=cluster-pool"), "{}", r.log);
    assert!(r.log.contains("kubeadm init --skip-token-print --skip-certificate-key-print"), "{}", r.log);

    // Upstream by default, and a box with the CLI downloads nothing.
    let g = Guest::new(&["containerd", "kubeadm"], true);
    let r = g.run(&scripts(test_options("bento/ubuntu-24.04", true))["control-plane.sh"], &[], "", &[]);
    assert!(r.ok, "{}", r.output);
    assert!(!r.log.contains("curl"), "{}", r.log);
    assert!(r.log.contains("cilium install --version 1.17.4"), "{}", r.log);

    let g = Guest::new(&["containerd", "kubeadm"], false);
    std::fs::remove_file(g.path("files").join("cilium-linux-amd64.tar.gz")).unwrap();
    let r = g.run(&scripts(test_options("bento/ubuntu-24.04", true))["control-plane.sh"], &[], "", &[]);
    assert!(!r.ok);
    assert!(r.output.contains("https://github.com/cilium/cilium-cli/releases/download/v0.18.3/cilium-linux-amd64.tar.gz"), "{}", r.output);
}

#[test]
fn control_plane_script_refuses_a_cilium_cli_whose_checksum_differs_fake_guest_tools() {
    let g = Guest::new(&["containerd", "kubeadm"], false);
    let sums = g.path("files").join("cilium-linux-amd64.tar.gz.sha256sum");
    std::fs::write(&sums, format!("{}  cilium-linux-amd64.tar.gz\n", "0".repeat(64))).unwrap();
    let r = g.run(&scripts(mirrored())["control-plane.sh"], &[], "", &[]);
    assert!(!r.ok, "{}", r.output);
    assert!(r.output.contains("FAILED"), "{}", r.output);
    assert!(!r.files.contains_key("usr/local/bin/cilium"), "{:?}", r.files.keys());
    assert!(!r.log.contains("cilium install"), "{}", r.log);
}
