//! Plan-time checks and defaults of the Vagrant options, as pure functions the provider layer
//! calls before anything is touched: the defaults of `box`, `cpus`, `memory_mb`,
//! `kubernetes_version`, `cilium_version`; the shape of each option (mirror URLs included);
//! how the options are kept in a registry entry's lab settings; and VirtualBox's rule that
//! host-only networks must lie in 192.168.56.0/21 unless `/etc/vbox/networks.conf` allows more.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::backend::spec::{Mirrors, VagrantOptions};
use crate::net::{self, Ipv4Net};

use super::hypervisor::Hypervisor;

/// Default box: a current Ubuntu LTS.
pub const DEFAULT_BOX: &str = "bento/ubuntu-24.04";
/// Default vCPUs per VM.
pub const DEFAULT_CPUS: u32 = 2;
/// Default memory per VM, MiB.
pub const DEFAULT_MEMORY_MB: u32 = 2048;
/// Default Kubernetes minor (a current stable one).
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.33";
pub use crate::backend::spec::DEFAULT_CILIUM_VERSION;
/// The only range VirtualBox (6.1.28 and later) allows for host-only networks when
/// `/etc/vbox/networks.conf` does not exist.
pub const VIRTUALBOX_DEFAULT_RANGE: &str = "192.168.56.0/21";
/// Where VirtualBox reads the ranges it allows for host-only networks.
pub const VIRTUALBOX_NETWORKS_CONF: &str = "/etc/vbox/networks.conf";

/// One option that cannot be used, with the attribute at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{attribute}: {message}")]
pub struct OptionError {
    /// The Terraform attribute at fault (`box`, `subnet`, `kubernetes_version`…).
    pub attribute: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn err(attribute: &'static str, message: impl Into<String>) -> OptionError {
    OptionError {
        attribute,
        message: message.into(),
    }
}

/// The options an instance gets when it sets none.
pub fn default_options() -> VagrantOptions {
    VagrantOptions {
        r#box: DEFAULT_BOX.to_string(),
        box_version: None,
        cpus: DEFAULT_CPUS,
        memory_mb: DEFAULT_MEMORY_MB,
        kubernetes_version: DEFAULT_KUBERNETES_VERSION.to_string(),
        provision: true,
        cilium_version: DEFAULT_CILIUM_VERSION.to_string(),
        mirrors: Mirrors::default(),
    }
}

/// The Terraform attribute and the lab-settings key of each mirror, with its field.
pub const MIRROR_ATTRIBUTES: [&str; 4] = ["kubernetes_package_mirror", "apt_proxy", "image_registry_mirror", "cilium_cli_mirror"];

impl Mirrors {
    /// The mirrors as `(attribute, value)`, in [`MIRROR_ATTRIBUTES`] order.
    pub fn by_attribute(&self) -> [(&'static str, &Option<String>); 4] {
        [
            (MIRROR_ATTRIBUTES[0], &self.kubernetes_packages),
            (MIRROR_ATTRIBUTES[1], &self.apt_proxy),
            (MIRROR_ATTRIBUTES[2], &self.images),
            (MIRROR_ATTRIBUTES[3], &self.cilium_cli),
        ]
    }

    /// The mirror of one attribute, for writing.
    pub fn by_attribute_mut(&mut self, attribute: &str) -> Option<&mut Option<String>> {
        match attribute {
            "kubernetes_package_mirror" => Some(&mut self.kubernetes_packages),
            "apt_proxy" => Some(&mut self.apt_proxy),
            "image_registry_mirror" => Some(&mut self.images),
            "cilium_cli_mirror" => Some(&mut self.cilium_cli),
            _ => None,
        }
    }
}

/// The options as a registry entry's lab settings record them (keys are the attribute names;
/// unset optional values have no key).
pub fn options_into_settings(opts: &VagrantOptions, settings: &mut BTreeMap<String, String>) {
    settings.insert("box".into(), opts.r#box.clone());
    match &opts.box_version {
        Some(v) => settings.insert("box_version".into(), v.clone()),
        None => settings.remove("box_version"),
    };
    settings.insert("cpus".into(), opts.cpus.to_string());
    settings.insert("memory_mb".into(), opts.memory_mb.to_string());
    settings.insert("kubernetes_version".into(), opts.kubernetes_version.clone());
    settings.insert("provision".into(), opts.provision.to_string());
    settings.insert("cilium_version".into(), opts.cilium_version.clone());
    for (attr, v) in opts.mirrors.by_attribute() {
        match v {
            Some(v) => settings.insert(attr.into(), v.clone()),
            None => settings.remove(attr),
        };
    }
}

/// The options a registry entry's lab settings record, with the defaults for what they do not
/// (entries written before an option existed).
pub fn options_from_settings(s: &BTreeMap<String, String>) -> VagrantOptions {
    let d = default_options();
    let mut mirrors = Mirrors::default();
    for attr in MIRROR_ATTRIBUTES {
        if let Some(slot) = mirrors.by_attribute_mut(attr) {
            *slot = s.get(attr).cloned();
        }
    }
    VagrantOptions {
        r#box: s.get("box").cloned().unwrap_or(d.r#box),
        box_version: s.get("box_version").cloned(),
        cpus: s.get("cpus").and_then(|v| v.parse().ok()).unwrap_or(d.cpus),
        memory_mb: s.get("memory_mb").and_then(|v| v.parse().ok()).unwrap_or(d.memory_mb),
        kubernetes_version: s.get("kubernetes_version").cloned().unwrap_or(d.kubernetes_version),
        provision: s.get("provision").map(|v| v == "true").unwrap_or(d.provision),
        cilium_version: s.get("cilium_version").cloned().unwrap_or(d.cilium_version),
        mirrors,
    }
}

/// `1.17.4`: a Cilium release (major.minor.patch, digits only).
pub fn is_cilium_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Why `url` cannot be a mirror URL (`None`: it can): `http://` or `https://`, a host, and no
/// characters that would need quoting in a shell word, an apt configuration line or a TOML
/// string (the scripts put it in all three).
pub fn mirror_url_problem(url: &str) -> Option<String> {
    let rest = match url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        Some(r) => r,
        None => return Some(format!("{url:?} is not an http:// or https:// URL")),
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Some(format!("{url:?} has no host"));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '\'' | '`' | '$' | ';' | '#')) {
        return Some(format!("{url:?} contains {c:?}, which a mirror URL cannot hold"));
    }
    None
}

/// `1.33` or `1.33.1`: what pkgs.k8s.io publishes.
pub fn is_kubernetes_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0] == "1"
}

/// Check each option's shape. Strings are escaped when rendered anyway; these checks catch
/// mistakes early with a message that names the attribute.
pub fn check_options(opts: &VagrantOptions) -> Result<(), OptionError> {
    let b = &opts.r#box;
    if b.trim().is_empty() {
        return Err(err(
            "box",
            format!("must name a box, e.g. \"{DEFAULT_BOX}\""),
        ));
    }
    if b.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err(
            "box",
            format!("{b:?} contains spaces or control characters; a box name looks like \"{DEFAULT_BOX}\""),
        ));
    }
    if let Some(v) = &opts.box_version {
        if v.trim().is_empty() || v.chars().any(|c| c.is_control()) {
            return Err(err(
                "box_version",
                format!(
                    "{v:?} is not a version constraint (e.g. \"202502.21.0\" or \">= 202502\")"
                ),
            ));
        }
    }
    if !(1..=64).contains(&opts.cpus) {
        return Err(err(
            "cpus",
            format!("{} is out of range: use 1 to 64", opts.cpus),
        ));
    }
    if !(256..=1_048_576).contains(&opts.memory_mb) {
        return Err(err(
            "memory_mb",
            format!(
                "{} MiB is out of range: use 256 to 1048576 (Kubernetes wants at least 2048)",
                opts.memory_mb
            ),
        ));
    }
    if !is_cilium_version(&opts.cilium_version) {
        return Err(err(
            "cilium_version",
            format!(
                "{:?} is not a Cilium release: use a full version such as \"{DEFAULT_CILIUM_VERSION}\"",
                opts.cilium_version
            ),
        ));
    }
    for (attr, v) in opts.mirrors.by_attribute() {
        if let Some(problem) = v.as_deref().and_then(mirror_url_problem) {
            return Err(err(attr, problem));
        }
    }
    if !is_kubernetes_version(&opts.kubernetes_version) {
        return Err(err(
            "kubernetes_version",
            format!(
                "{:?} is not a Kubernetes version: use a minor such as \"{DEFAULT_KUBERNETES_VERSION}\" or a full version such as \"{DEFAULT_KUBERNETES_VERSION}.1\"",
                opts.kubernetes_version
            ),
        ));
    }
    Ok(())
}

/// The ranges VirtualBox allows for host-only networks, from the content of
/// `/etc/vbox/networks.conf` (`None`: the file does not exist, so only 192.168.56.0/21).
/// Lines look like `* 10.0.0.0/8 192.168.0.0/16`; `#` starts a comment.
pub fn virtualbox_allowed_ranges(networks_conf: Option<&str>) -> Vec<Ipv4Net> {
    match networks_conf {
        None => vec![VIRTUALBOX_DEFAULT_RANGE.parse().expect("constant range")],
        Some(text) => text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| l.trim().strip_prefix('*'))
            .flat_map(|rest| rest.split_whitespace())
            .filter_map(|w| w.parse::<Ipv4Net>().ok().map(|n| n.trunc()))
            .collect(),
    }
}

/// The ranges allowed on this host (reads `/etc/vbox/networks.conf` if it exists).
pub fn virtualbox_allowed_ranges_here() -> Vec<Ipv4Net> {
    let text = std::fs::read_to_string(VIRTUALBOX_NETWORKS_CONF).ok();
    virtualbox_allowed_ranges(text.as_deref())
}

/// With VirtualBox, the instance subnet must lie inside one of the allowed ranges.
pub fn check_virtualbox_subnet(subnet: &Ipv4Net, allowed: &[Ipv4Net]) -> Result<(), OptionError> {
    if allowed.iter().any(|r| r.contains(subnet)) {
        return Ok(());
    }
    let shown: Vec<String> = allowed.iter().map(|r| r.to_string()).collect();
    let allowed_text = if shown.is_empty() {
        format!("{VIRTUALBOX_NETWORKS_CONF} allows no range at all")
    } else {
        format!(
            "VirtualBox allows host-only networks only in {}",
            shown.join(", ")
        )
    };
    let wider = Ipv4Net::new(subnet.network(), subnet.prefix_len().min(16))
        .map(|n| n.trunc())
        .unwrap_or(*subnet);
    Err(err(
        "subnet",
        format!(
            "{subnet} cannot be a VirtualBox host-only network: {allowed_text} (since VirtualBox 6.1.28 only {VIRTUALBOX_DEFAULT_RANGE} unless {VIRTUALBOX_NETWORKS_CONF} lists other ranges). \
             Fix: take subnets from inside an allowed range (e.g. a subnet pool in {VIRTUALBOX_DEFAULT_RANGE}), or allow this one by adding the line `* {wider}` to {VIRTUALBOX_NETWORKS_CONF} (as root), or use hypervisor = \"libvirt\"."
        ),
    ))
}

/// All plan-time checks of a Vagrant instance: options, and for VirtualBox the subnet rule
/// against `allowed` (see [`virtualbox_allowed_ranges_here`]).
pub fn check_instance(
    opts: &VagrantOptions,
    subnet: &Ipv4Net,
    hypervisor: Hypervisor,
    allowed: &[Ipv4Net],
) -> Result<(), OptionError> {
    check_options(opts)?;
    if hypervisor == Hypervisor::VirtualBox {
        check_virtualbox_subnet(subnet, allowed)?;
    }
    if net::nth_address(subnet, crate::backend::WORKER_OFFSET).is_none() {
        return Err(err(
            "subnet",
            format!("{subnet} is too small for the node address plan (.10 control planes, .20 workers): use a /26 or larger"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_checks() {
        check_options(&default_options()).unwrap();
    }

    #[test]
    fn cilium_versions_and_mirror_urls() {
        assert!(is_cilium_version("1.17.4"));
        assert!(!is_cilium_version("1.17"));
        assert!(!is_cilium_version("v1.17.4"));
        assert!(!is_cilium_version("1.17.4; reboot"));
        assert_eq!(mirror_url_problem("http://mirror.lab:3142"), None);
        assert_eq!(mirror_url_problem("https://mirror.lab/k8s/core:/stable:"), None);
        assert!(mirror_url_problem("ftp://mirror.lab").unwrap().contains("not an http"));
        assert!(mirror_url_problem("mirror.lab").unwrap().contains("not an http"));
        assert!(mirror_url_problem("http:///x").unwrap().contains("no host"));
        assert!(mirror_url_problem("http://m/a b").unwrap().contains("' '"));
        assert!(mirror_url_problem("http://m/\"x").is_some());
        assert!(mirror_url_problem("http://m/$(reboot)").is_some());
        let mut o = default_options();
        o.mirrors.images = Some("registry.lab:5000".into());
        assert_eq!(check_options(&o).unwrap_err().attribute, "image_registry_mirror");
        let mut o = default_options();
        o.cilium_version = "latest".into();
        assert_eq!(check_options(&o).unwrap_err().attribute, "cilium_version");
    }

    #[test]
    fn options_survive_the_lab_settings() {
        let mut o = default_options();
        o.box_version = Some(">= 1".into());
        o.cilium_version = "1.16.9".into();
        o.mirrors.kubernetes_packages = Some("http://m/k8s".into());
        o.mirrors.cilium_cli = Some("http://m/cilium-cli".into());
        let mut s = BTreeMap::new();
        s.insert("hypervisor".to_string(), "libvirt".to_string());
        s.insert("apt_proxy".to_string(), "http://stale".to_string());
        options_into_settings(&o, &mut s);
        assert_eq!(s.get("hypervisor").map(String::as_str), Some("libvirt"), "other settings stay");
        assert!(!s.contains_key("apt_proxy"), "an unset mirror leaves no key");
        assert_eq!(options_from_settings(&s), o);
        // An entry written before these options existed reads as the defaults.
        let old: BTreeMap<String, String> = [("box", "b"), ("provision", "false")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let read = options_from_settings(&old);
        assert_eq!(read.cilium_version, DEFAULT_CILIUM_VERSION);
        assert_eq!(read.mirrors, Mirrors::default());
        assert!(!read.provision);
    }

    #[test]
    fn kubernetes_versions() {
        assert!(is_kubernetes_version("1.33"));
        assert!(is_kubernetes_version("1.33.1"));
        assert!(!is_kubernetes_version("v1.33"));
        assert!(!is_kubernetes_version("1.33; rm -rf /"));
        assert!(!is_kubernetes_version("1"));
        assert!(!is_kubernetes_version("2.0"));
    }

    #[test]
    fn virtualbox_subnet_outside_default_range_is_explained() {
        let allowed = virtualbox_allowed_ranges(None);
        check_virtualbox_subnet(&"192.168.57.0/24".parse().unwrap(), &allowed).unwrap();
        let e = check_virtualbox_subnet(&"10.10.0.0/24".parse().unwrap(), &allowed).unwrap_err();
        assert_eq!(e.attribute, "subnet");
        assert!(e.message.contains("192.168.56.0/21"), "{e}");
        assert!(e.message.contains("/etc/vbox/networks.conf"), "{e}");
        assert!(e.message.contains("* 10.10.0.0/16"), "{e}");
    }

    #[test]
    fn networks_conf_replaces_the_default_range() {
        let allowed = virtualbox_allowed_ranges(Some("# mine\n* 10.0.0.0/8 172.16.0.0/12\n"));
        check_virtualbox_subnet(&"10.10.0.0/24".parse().unwrap(), &allowed).unwrap();
        assert!(check_virtualbox_subnet(&"192.168.56.0/24".parse().unwrap(), &allowed).is_err());
    }

    #[test]
    fn hostile_or_silly_options_are_refused() {
        let mut o = default_options();
        o.r#box = "a\nb".into();
        assert_eq!(check_options(&o).unwrap_err().attribute, "box");
        let mut o = default_options();
        o.kubernetes_version = "$(reboot)".into();
        assert_eq!(
            check_options(&o).unwrap_err().attribute,
            "kubernetes_version"
        );
        let mut o = default_options();
        o.cpus = 0;
        assert_eq!(check_options(&o).unwrap_err().attribute, "cpus");
    }
}
