//! Plan-time checks and defaults of the Vagrant options, as pure functions the provider layer
//! calls before anything is touched: the defaults of `box`, `cpus`, `memory_mb`,
//! `kubernetes_version`; the shape of each option; and VirtualBox's rule that host-only
//! networks must lie in 192.168.56.0/21 unless `/etc/vbox/networks.conf` allows more.

use thiserror::Error;

use crate::backend::VagrantOptions;
use crate::net::{self, Ipv4Net};

use super::Hypervisor;

/// Default box: a current Ubuntu LTS.
pub const DEFAULT_BOX: &str = "bento/ubuntu-24.04";
/// Default vCPUs per VM.
pub const DEFAULT_CPUS: u32 = 2;
/// Default memory per VM, MiB.
pub const DEFAULT_MEMORY_MB: u32 = 2048;
/// Default Kubernetes minor (a current stable one).
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.33";
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
    }
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
