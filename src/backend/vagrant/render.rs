//! Rendering an instance's `Vagrantfile` and its provisioning scripts from a [`LabSpec`].
//!
//! Everything here is pure and deterministic (same spec, same bytes), so a rewrite only
//! happens when the spec changed and snapshot tests can pin the output. Nothing that comes
//! from HCL reaches Ruby or a shell unescaped: names are validated DNS labels before they get
//! here (and checked again), every other string goes through [`ruby_str`] (a double-quoted
//! Ruby literal with `\`, `"`, `#` and every control or non-ASCII character escaped, so
//! `#{...}` never interpolates and no line break is ever written) or, in scripts, through
//! [`sh_str`] (a single-quoted shell word). Values reach the scripts only as such quoted
//! assignments at their top: Vagrant's own `args:`/`env:` quoting is not safe against `$(...)`.

use std::fmt::Write as _;

use crate::backend::spec::{LabSpec, NodeSpec, Role, VagrantOptions};
use crate::net::Ipv4Net;

use super::hypervisor::{Hypervisor, LibvirtDriver};

/// Name of the generated file that lists the nodes, kept next to the Vagrantfile.
pub const VAGRANTFILE: &str = "Vagrantfile";
/// Folder (inside the instance folder) holding the provisioning scripts.
pub const SCRIPTS_DIR: &str = "scripts";
/// Script run on every node: container runtime and Kubernetes packages.
pub const NODE_SCRIPT: &str = "node.sh";
/// Script run on the first control plane: `kubeadm init` and Cilium.
pub const CONTROL_PLANE_SCRIPT: &str = "control-plane.sh";
/// Script run on every control plane of an instance with several: keepalived holding the
/// API's virtual IP (see `backend::api_address`).
pub const KEEPALIVED_SCRIPT: &str = "keepalived.sh";
/// Cilium CLI release used to install Cilium (the release `cilium_version` names).
pub const CILIUM_CLI_VERSION: &str = "v0.18.3";
/// Where the Kubernetes packages come from without `kubernetes_package_mirror`.
pub const KUBERNETES_PACKAGES_UPSTREAM: &str = "https://pkgs.k8s.io/core:/stable:";
/// The registries an `image_registry_mirror` stands in for (containerd tries the mirror
/// first, then the registry itself).
pub const MIRRORED_REGISTRIES: [&str; 4] = ["registry.k8s.io", "quay.io", "docker.io", "ghcr.io"];

/// Where the cilium CLI release comes from without `cilium_cli_mirror`.
fn cilium_cli_upstream() -> String {
    format!("https://github.com/cilium/cilium-cli/releases/download/{CILIUM_CLI_VERSION}")
}

const NODE_TEMPLATE: &str = include_str!("scripts/node.sh");
const CONTROL_PLANE_TEMPLATE: &str = include_str!("scripts/control-plane.sh");
const KEEPALIVED_TEMPLATE: &str = include_str!("scripts/keepalived.sh");
/// The line of each template that the quoted values replace.
const VALUES_MARKER: &str = "# @HOMELAB_VALUES@\n";

/// How to render: the hypervisor-specific parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderTarget {
    /// VirtualBox or libvirt.
    pub hypervisor: Hypervisor,
    /// For libvirt: kvm or qemu (software emulation).
    pub libvirt_driver: LibvirtDriver,
}

/// Why a spec cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A name that must be a DNS label is not one.
    #[error("`{0}` is not a valid name: use lowercase letters, digits and '-', at most 63 characters, starting with a letter")]
    BadName(String),
    /// The spec has no Vagrant options.
    #[error("instance `{0}` has no Vagrant options (box, cpus, memory…)")]
    NoOptions(String),
    /// The spec has no node.
    #[error("instance `{0}` has no node")]
    NoNodes(String),
    /// libvirt needs the instance's own management network.
    #[error("instance `{0}` has no management network: with hypervisor = \"libvirt\" every instance needs its own (mgmt_cidr)")]
    NoMgmtNetwork(String),
}

/// A DNS label as used for instance and node names: `[a-z]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `s` as a double-quoted Ruby string literal that evaluates to exactly `s`: backslash,
/// double quote and `#` are escaped (no interpolation), every control and non-ASCII
/// character becomes `\u{…}` (the literal is plain ASCII on one line).
pub fn ruby_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '#' => out.push_str("\\#"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// `s` as one single-quoted POSIX shell word that expands to exactly `s`.
pub fn sh_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Name of the instance's host-only libvirt network.
pub fn hostonly_network_name(instance: &str) -> String {
    format!("homelab-{instance}")
}

/// The serial console log of a libvirt machine, relative to its instance folder.
pub fn console_log(node: &str) -> String {
    format!("console/{node}.log")
}

/// Name of the instance's own (isolated) libvirt management network.
pub fn mgmt_network_name(instance: &str) -> String {
    format!("homelab-{instance}-mgmt")
}

/// Prefix of the libvirt domain names (`homelab-acme-cp-1`).
pub const DOMAIN_PREFIX: &str = "homelab-";

/// The libvirt domain name of a node.
pub fn domain_name(node: &str) -> String {
    format!("{DOMAIN_PREFIX}{node}")
}

/// Dotted netmask of a network (`255.255.255.0`).
fn netmask(net: &Ipv4Net) -> String {
    net.netmask().to_string()
}

/// Per-node mask Cilium's cluster-pool IPAM carves out of the pod CIDR: /24 when the pod
/// CIDR is large enough, else four bits more than the pod CIDR (16 slices for ≤ 13 nodes).
pub fn cilium_node_mask(pod_cidr: &Ipv4Net) -> u8 {
    (pod_cidr.prefix_len() + 4).clamp(24, 30)
}

fn check_names(spec: &LabSpec) -> Result<(), RenderError> {
    if !is_dns_label(&spec.instance) {
        return Err(RenderError::BadName(spec.instance.clone()));
    }
    for n in &spec.nodes {
        if !is_dns_label(&n.name) {
            return Err(RenderError::BadName(n.name.clone()));
        }
    }
    if spec.nodes.is_empty() {
        return Err(RenderError::NoNodes(spec.instance.clone()));
    }
    Ok(())
}

fn options(spec: &LabSpec) -> Result<&VagrantOptions, RenderError> {
    spec.vagrant
        .as_ref()
        .ok_or_else(|| RenderError::NoOptions(spec.instance.clone()))
}

/// The first control plane: the one that runs `kubeadm init` and serves the API.
pub fn first_control_plane(spec: &LabSpec) -> Option<&NodeSpec> {
    spec.nodes.iter().find(|n| n.role == Role::ControlPlane)
}

/// The instance's `Vagrantfile`.
pub fn render_vagrantfile(spec: &LabSpec, target: RenderTarget) -> Result<String, RenderError> {
    check_names(spec)?;
    let opts = options(spec)?;
    let inst = &spec.instance;
    let mut v = String::new();
    let _ = writeln!(
        v,
        "# Generated by terraform-provider-homelab {} for instance {inst}. Do not edit:",
        env!("CARGO_PKG_VERSION")
    );
    v.push_str("# every apply rewrites this file from the Terraform configuration.\n\n");
    v.push_str("Vagrant.configure(\"2\") do |config|\n");
    let _ = writeln!(v, "  config.vm.box = {}", ruby_str(&opts.r#box));
    if let Some(version) = &opts.box_version {
        let _ = writeln!(v, "  config.vm.box_version = {}", ruby_str(version));
    }
    v.push_str("  config.vm.box_check_update = false\n");
    v.push_str("  # No shared folder: nothing of the host is exposed to the VMs.\n");
    v.push_str("  config.vm.synced_folder \".\", \"/vagrant\", disabled: true\n");
    v.push('\n');
    match target.hypervisor {
        Hypervisor::Libvirt => {
            let mgmt = spec
                .mgmt_cidr
                .ok_or_else(|| RenderError::NoMgmtNetwork(inst.clone()))?;
            v.push_str("  config.vm.provider :libvirt do |libvirt|\n");
            let _ = writeln!(
                v,
                "    libvirt.driver = {}",
                ruby_str(target.libvirt_driver.as_str())
            );
            let _ = writeln!(v, "    libvirt.cpus = {}", opts.cpus);
            let _ = writeln!(v, "    libvirt.memory = {}", opts.memory_mb);
            let _ = writeln!(
                v,
                "    libvirt.default_prefix = {}",
                ruby_str(DOMAIN_PREFIX)
            );
            v.push_str(
                "    # This instance's own management network, isolated (no <forward>): VMs of\n    # other instances are never on it.\n",
            );
            let _ = writeln!(
                v,
                "    libvirt.management_network_name = {}",
                ruby_str(&mgmt_network_name(inst))
            );
            let _ = writeln!(
                v,
                "    libvirt.management_network_address = {}",
                ruby_str(&mgmt.to_string())
            );
            v.push_str("    libvirt.management_network_mode = \"none\"\n");
            v.push_str("    libvirt.management_network_guest_ipv6 = \"no\"\n");
            v.push_str("  end\n");
        }
        Hypervisor::VirtualBox => {
            v.push_str("  config.vm.provider :virtualbox do |vb|\n");
            let _ = writeln!(v, "    vb.cpus = {}", opts.cpus);
            let _ = writeln!(v, "    vb.memory = {}", opts.memory_mb);
            v.push_str("  end\n");
        }
    }
    for node in &spec.nodes {
        v.push('\n');
        let _ = writeln!(v, "  config.vm.define {} do |node|", ruby_str(&node.name));
        let _ = writeln!(v, "    node.vm.hostname = {}", ruby_str(&node.name));
        match target.hypervisor {
            Hypervisor::Libvirt => {
                let _ = writeln!(
                    v,
                    "    node.vm.network \"private_network\", ip: {}, netmask: {},\n      libvirt__network_name: {}, libvirt__host_ip: {},\n      libvirt__forward_mode: \"none\", libvirt__dhcp_enabled: false, libvirt__guest_ipv6: \"no\"",
                    ruby_str(&node.ip.to_string()),
                    ruby_str(&netmask(&spec.subnet)),
                    ruby_str(&hostonly_network_name(inst)),
                    ruby_str(&spec.gateway.to_string()),
                );
                let _ = writeln!(
                    v,
                    "    node.vm.provider :libvirt do |libvirt|\n      # Kernel and boot messages, kept beside this file (the provider shows their\n      # last lines when a boot fails or hangs).\n      libvirt.serial :type => \"file\", :source => {{:path => File.join(__dir__, {})}}\n    end",
                    ruby_str(&console_log(&node.name))
                );
            }
            Hypervisor::VirtualBox => {
                let _ = writeln!(
                    v,
                    "    node.vm.network \"private_network\", ip: {}, netmask: {}",
                    ruby_str(&node.ip.to_string()),
                    ruby_str(&netmask(&spec.subnet)),
                );
                let _ = writeln!(
                    v,
                    "    node.vm.provider :virtualbox do |vb|\n      vb.name = {}\n    end",
                    ruby_str(&domain_name(&node.name))
                );
            }
        }
        if opts.provision {
            let _ = writeln!(
                v,
                "    node.vm.provision \"shell\", name: \"node\", path: {}, args: [{}]",
                ruby_str(&format!("{SCRIPTS_DIR}/{NODE_SCRIPT}")),
                ruby_str(&node.ip.to_string())
            );
            let cps: Vec<&NodeSpec> = spec.nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
            if cps.len() > 1 {
                if let Some(rank) = cps.iter().position(|n| n.name == node.name) {
                    let _ = writeln!(
                        v,
                        "    node.vm.provision \"shell\", name: \"keepalived\", path: {}, args: [{}, {}]",
                        ruby_str(&format!("{SCRIPTS_DIR}/{KEEPALIVED_SCRIPT}")),
                        ruby_str(&node.ip.to_string()),
                        ruby_str(&(rank + 1).to_string())
                    );
                }
            }
            if first_control_plane(spec).map(|n| &n.name) == Some(&node.name) {
                let _ = writeln!(
                    v,
                    "    node.vm.provision \"shell\", name: \"control-plane\", path: {}",
                    ruby_str(&format!("{SCRIPTS_DIR}/{CONTROL_PLANE_SCRIPT}"))
                );
            }
        }
        v.push_str("  end\n");
    }
    v.push_str("end\n");
    Ok(v)
}

fn script(template: &str, instance: &str, job: &str, values: &[(&str, String)]) -> String {
    let mut head = String::new();
    let _ = writeln!(
        head,
        "# Values for instance {instance}, written by terraform-provider-homelab {} ({job}).",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in values {
        let _ = writeln!(head, "{name}={}", sh_str(value));
    }
    debug_assert!(template.contains(VALUES_MARKER));
    template.replacen(VALUES_MARKER, &head, 1)
}

/// The provisioning scripts of an instance as `(file name, content)`, empty when
/// `provision = false`. They go to `<instance dir>/scripts/`.
pub fn render_scripts(spec: &LabSpec) -> Result<Vec<(String, String)>, RenderError> {
    check_names(spec)?;
    let opts = options(spec)?;
    if !opts.provision {
        return Ok(Vec::new());
    }
    let cp =
        first_control_plane(spec).ok_or_else(|| RenderError::NoNodes(spec.instance.clone()))?;
    let api = crate::backend::api_address(&spec.subnet, &spec.nodes).ok_or_else(|| RenderError::NoNodes(spec.instance.clone()))?;
    let m = &opts.mirrors;
    let trimmed = |v: &Option<String>| v.as_deref().map(|u| u.trim_end_matches('/').to_string());
    let node = script(
        NODE_TEMPLATE,
        &spec.instance,
        "node set-up",
        &[
            ("K8S_VERSION", opts.kubernetes_version.clone()),
            ("K8S_PACKAGES", trimmed(&m.kubernetes_packages).unwrap_or_else(|| KUBERNETES_PACKAGES_UPSTREAM.to_string())),
            ("APT_PROXY", trimmed(&m.apt_proxy).unwrap_or_default()),
            ("IMAGE_MIRROR", trimmed(&m.images).unwrap_or_default()),
            ("MIRRORED_REGISTRIES", MIRRORED_REGISTRIES.join(" ")),
        ],
    );
    let control_plane = script(
        CONTROL_PLANE_TEMPLATE,
        &spec.instance,
        "first control plane",
        &[
            ("NODE_NAME", cp.name.clone()),
            ("ADVERTISE_ADDRESS", cp.ip.to_string()),
            ("API_ADDRESS", api.to_string()),
            ("POD_CIDR", spec.pod_cidr.to_string()),
            ("SERVICE_CIDR", spec.service_cidr.to_string()),
            (
                "POD_NODE_MASK",
                cilium_node_mask(&spec.pod_cidr).to_string(),
            ),
            ("CILIUM_VERSION", opts.cilium_version.clone()),
            ("CILIUM_CLI", trimmed(&m.cilium_cli).unwrap_or_else(cilium_cli_upstream)),
        ],
    );
    let mut scripts = vec![
        (NODE_SCRIPT.to_string(), node),
        (CONTROL_PLANE_SCRIPT.to_string(), control_plane),
    ];
    let cps: Vec<String> = spec.nodes.iter().filter(|n| n.role == Role::ControlPlane).map(|n| n.ip.to_string()).collect();
    if cps.len() > 1 {
        let octets = spec.subnet.network().octets();
        scripts.push((
            KEEPALIVED_SCRIPT.to_string(),
            script(
                KEEPALIVED_TEMPLATE,
                &spec.instance,
                "control-plane virtual IP",
                &[
                    ("API_ADDRESS", api.to_string()),
                    ("PREFIX", spec.subnet.prefix_len().to_string()),
                    ("PEERS", cps.join(" ")),
                    ("VRRP_NAME", format!("homelab_{}", spec.instance.replace('-', "_"))),
                    // One instance per host-only network: any id is unique there; this one
                    // also differs between instances, for whoever reads a capture.
                    ("VRRP_ID", (u32::from(octets[2]) % 254 + 1).to_string()),
                ],
            ),
        ));
    }
    Ok(scripts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_literal_escapes_interpolation_quotes_and_newlines() {
        assert_eq!(ruby_str("a\"b"), r#""a\"b""#);
        assert_eq!(ruby_str("#{x}"), r#""\#{x}""#);
        assert_eq!(ruby_str("a\\"), r#""a\\""#);
        assert_eq!(ruby_str("l1\nl2"), r#""l1\nl2""#);
        assert_eq!(ruby_str("é\u{7}"), r#""\u{e9}\u{7}""#);
        assert!(!ruby_str("x\ny\r").contains('\n'));
    }

    #[test]
    fn shell_word_survives_single_quotes() {
        assert_eq!(sh_str("it's"), r"'it'\''s'");
        assert_eq!(sh_str("$(x)"), "'$(x)'");
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("acme"));
        assert!(is_dns_label("acme-cp-1"));
        assert!(!is_dns_label("Acme"));
        assert!(!is_dns_label("1acme"));
        assert!(!is_dns_label("acme-"));
        assert!(!is_dns_label("a\"b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn cilium_mask_leaves_room_for_all_nodes() {
        assert_eq!(cilium_node_mask(&"10.244.0.0/16".parse().unwrap()), 24);
        assert_eq!(cilium_node_mask(&"10.244.0.0/22".parse().unwrap()), 26);
    }
}
