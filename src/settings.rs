//! Validated provider settings: the four address pools, reservation TTL, the backend choices
//! (default backend, lab host, Vagrant binary, hypervisor, libvirt driver) and where the
//! registry lives. The provider layer hands raw strings in; what comes out is
//! either settings every other module can trust, or errors that name the attribute at fault.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::backend::vagrant::hypervisor::{Hypervisor, LibvirtDriver};
use crate::backend::spec::BackendKind;
use crate::net::{self, Ipv4Net, Pool};
use crate::registry::etcd::EtcdConfig;
use crate::registry::{Kind, Pools};

/// Default host-only pool: VirtualBox's default permitted range (8 /24 subnets).
pub const DEFAULT_HOST_POOL: &str = "192.168.56.0/21";
/// Default pod pool: the /12 that holds the seed's 10.244.0.0 reserved space.
pub const DEFAULT_POD_POOL: &str = "10.240.0.0/12";
/// Default service pool.
pub const DEFAULT_SERVICE_POOL: &str = "10.96.0.0/12";
/// Default pool for per-instance libvirt management networks.
pub const DEFAULT_MGMT_POOL: &str = "172.30.0.0/16";
/// The pod slot handed out first (the well-known 10.244.0.0/16), the pool wrapping round after.
pub const POD_POOL_START: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
/// Default reservation lifetime.
pub const DEFAULT_RESERVATION_TTL: &str = "24h";
/// Longest reservation lifetime: 30 days (`720h`). A plan older than that is stale anyway.
pub const MAX_RESERVATION_TTL: Duration = Duration::from_secs(720 * 3600);
/// Longest operation timeout (`timeouts` of an instance): 24 hours.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Default key prefix of the etcd store.
pub const DEFAULT_ETCD_PREFIX: &str = crate::registry::etcd::DEFAULT_PREFIX;
/// Default lab host namespace of the netns backend.
pub const DEFAULT_NETNS_HOST: &str = "homelab";

/// One setting that cannot be used, with the attribute it came from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{attribute}: {message}")]
pub struct SettingError {
    /// Provider attribute at fault (`pod_pool`, `host_prefix`, …).
    pub attribute: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SettingError {
    fn new(attribute: &'static str, message: impl Into<String>) -> Self {
        SettingError {
            attribute,
            message: message.into(),
        }
    }
}

/// Raw provider configuration, as given (None = not set).
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    /// `home`
    pub home: Option<String>,
    /// `host_pool`
    pub host_pool: Option<String>,
    /// `host_prefix`
    pub host_prefix: Option<i64>,
    /// `pod_pool`
    pub pod_pool: Option<String>,
    /// `pod_prefix`
    pub pod_prefix: Option<i64>,
    /// `service_pool`
    pub service_pool: Option<String>,
    /// `service_prefix`
    pub service_prefix: Option<i64>,
    /// `mgmt_pool`
    pub mgmt_pool: Option<String>,
    /// `mgmt_prefix`
    pub mgmt_prefix: Option<i64>,
    /// `reservation_ttl`
    pub reservation_ttl: Option<String>,
    /// The `etcd` block, when given.
    pub etcd: Option<RawEtcd>,
}

/// The provider block's `etcd { … }`, as given (None = not set).
#[derive(Debug, Clone, Default)]
pub struct RawEtcd {
    /// `endpoints`
    pub endpoints: Option<Vec<String>>,
    /// `prefix`
    pub prefix: Option<String>,
    /// `ca_file`
    pub ca_file: Option<String>,
    /// `cert_file`
    pub cert_file: Option<String>,
    /// `key_file`
    pub key_file: Option<String>,
    /// `username`
    pub username: Option<String>,
    /// `password`
    pub password: Option<secrecy::SecretString>,
}

/// The etcd store's configuration from its block, or the errors naming `etcd.<attribute>`.
pub fn etcd_config(raw: &RawEtcd) -> Result<EtcdConfig, Vec<SettingError>> {
    let mut errors = Vec::new();
    let mut c = EtcdConfig::new(raw.endpoints.clone().unwrap_or_default(), raw.prefix.clone().unwrap_or_else(|| DEFAULT_ETCD_PREFIX.into()));
    c.ca_file = raw.ca_file.as_ref().map(PathBuf::from);
    match (&raw.cert_file, &raw.key_file) {
        (Some(cert), Some(key)) => c.identity = Some((cert.into(), key.into())),
        (None, None) => {}
        (Some(_), None) => errors.push(SettingError::new("etcd.key_file", "cert_file is set: key_file (its private key, PEM) is needed too")),
        (None, Some(_)) => errors.push(SettingError::new("etcd.cert_file", "key_file is set: cert_file (the client certificate, PEM) is needed too")),
    }
    match (&raw.username, &raw.password) {
        (Some(u), Some(p)) => c.user = Some((u.clone(), p.clone())),
        (None, None) => {}
        (Some(_), None) => errors.push(SettingError::new("etcd.password", "username is set: password is needed too")),
        (None, Some(_)) => errors.push(SettingError::new("etcd.username", "password is set: username is needed too")),
    }
    for (attribute, message) in c.problems() {
        let attribute = match attribute {
            "endpoints" => "etcd.endpoints",
            "prefix" => "etcd.prefix",
            "ca_file" => "etcd.ca_file",
            "cert_file" => "etcd.cert_file",
            "key_file" => "etcd.key_file",
            _ => "etcd.username",
        };
        errors.push(SettingError::new(attribute, message));
    }
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(errors)
    }
}

/// Settings every module can trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Registry folder.
    pub home: PathBuf,
    /// The four pools.
    pub pools: Pools,
    /// How long a plan-time reservation holds its networks.
    pub reservation_ttl: Duration,
    /// The etcd store, when the provider block has `etcd { … }` (else the file store in `home`).
    pub etcd: Option<EtcdConfig>,
}

/// The provider block's backend choices, as given (None = not set).
#[derive(Debug, Clone, Default)]
pub struct RawChoices {
    /// `default_backend`
    pub default_backend: Option<String>,
    /// `netns_host`
    pub netns_host: Option<String>,
    /// `vagrant_bin`
    pub vagrant_bin: Option<String>,
    /// `hypervisor`
    pub hypervisor: Option<String>,
    /// `libvirt_driver`
    pub libvirt_driver: Option<String>,
}

/// The backend choices, checked once here and typed, so nothing below parses them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoices {
    /// Backend of instances that do not set one.
    pub default_backend: BackendKind,
    /// netns lab host namespace.
    pub netns_host: String,
    /// Vagrant executable.
    pub vagrant_bin: String,
    /// Hypervisor of the vagrant backend.
    pub hypervisor: Hypervisor,
    /// libvirt domain type.
    pub libvirt_driver: LibvirtDriver,
}

fn choice<T>(
    errors: &mut Vec<SettingError>,
    attribute: &'static str,
    value: &Option<String>,
    default: T,
    parse: fn(&str) -> Option<T>,
    allowed: &str,
) -> Option<T> {
    match value {
        None => Some(default),
        Some(v) => {
            let parsed = parse(v);
            if parsed.is_none() {
                errors.push(SettingError::new(attribute, format!("{v:?} is not one of: {allowed}")));
            }
            parsed
        }
    }
}

/// Check the backend choices: every problem, each naming its attribute.
pub fn backend_choices(raw: &RawChoices) -> Result<BackendChoices, Vec<SettingError>> {
    let mut errors = Vec::new();
    let default_backend = choice(&mut errors, "default_backend", &raw.default_backend, BackendKind::Vagrant, BackendKind::parse, "netns, vagrant");
    let hypervisor = choice(&mut errors, "hypervisor", &raw.hypervisor, Hypervisor::VirtualBox, Hypervisor::parse, "virtualbox, libvirt");
    let libvirt_driver = choice(&mut errors, "libvirt_driver", &raw.libvirt_driver, LibvirtDriver::Kvm, LibvirtDriver::parse, "kvm, qemu");
    let netns_host = raw.netns_host.clone().unwrap_or_else(|| DEFAULT_NETNS_HOST.into());
    // Node namespaces are named `<netns_host>-<node>`: without '-' in the host name, two lab
    // hosts can never produce the same node namespace name.
    let host_ok = !netns_host.is_empty()
        && netns_host.len() <= 24
        && netns_host.starts_with(|c: char| c.is_ascii_lowercase())
        && netns_host.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !host_ok {
        errors.push(SettingError::new(
            "netns_host",
            format!("{netns_host:?} cannot name the lab host namespace: use 1 to 24 lowercase letters and digits, starting with a letter (no '-': node namespaces are named `<netns_host>-<node>`)"),
        ));
    }
    let vagrant_bin = raw.vagrant_bin.clone().unwrap_or_else(|| "vagrant".into());
    if vagrant_bin.is_empty() {
        errors.push(SettingError::new("vagrant_bin", "must not be empty"));
    }
    match (default_backend, hypervisor, libvirt_driver) {
        (Some(default_backend), Some(hypervisor), Some(libvirt_driver)) if errors.is_empty() => Ok(BackendChoices {
            default_backend,
            netns_host,
            vagrant_bin,
            hypervisor,
            libvirt_driver,
        }),
        _ => Err(errors),
    }
}

/// The registry folder when `home` is not set: `$HOMELAB_HOME`, else `~/.homelab`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HOMELAB_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    base.join(".homelab")
}

fn pool_setting(
    errors: &mut Vec<SettingError>,
    kind: Kind,
    cidr: Option<&str>,
    default_cidr: &str,
    prefix: Option<i64>,
    default_prefix: u8,
    start: Option<Ipv4Addr>,
) -> Option<Pool> {
    let pool_attr = kind.pool_attribute();
    let prefix_attr = kind.prefix_attribute();
    let cidr = match net::parse_lab_network(cidr.unwrap_or(default_cidr)) {
        Ok(c) => c,
        Err(e) => {
            errors.push(SettingError::new(pool_attr, e.to_string()));
            return None;
        }
    };
    let prefix = match prefix {
        None => default_prefix,
        Some(p) if (0..=32).contains(&p) => p as u8,
        Some(p) => {
            errors.push(SettingError::new(
                prefix_attr,
                format!("{p} is not a prefix length (0 to 32)"),
            ));
            return None;
        }
    };
    let built = match start {
        Some(s) => Pool::starting_at(cidr, prefix, s),
        None => Pool::new(cidr, prefix),
    };
    match built {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(SettingError::new(prefix_attr, format!("{e} ({pool_attr} = {cidr})")));
            None
        }
    }
}

/// Validate raw settings. All problems are reported, each naming its attribute.
pub fn validate(raw: &RawSettings) -> Result<Settings, Vec<SettingError>> {
    let mut errors = Vec::new();
    let host = pool_setting(
        &mut errors,
        Kind::Subnet,
        raw.host_pool.as_deref(),
        DEFAULT_HOST_POOL,
        raw.host_prefix,
        24,
        None,
    );
    let pod = pool_setting(
        &mut errors,
        Kind::PodCidr,
        raw.pod_pool.as_deref(),
        DEFAULT_POD_POOL,
        raw.pod_prefix,
        16,
        Some(POD_POOL_START),
    );
    let service = pool_setting(
        &mut errors,
        Kind::ServiceCidr,
        raw.service_pool.as_deref(),
        DEFAULT_SERVICE_POOL,
        raw.service_prefix,
        16,
        None,
    );
    let mgmt = pool_setting(
        &mut errors,
        Kind::MgmtCidr,
        raw.mgmt_pool.as_deref(),
        DEFAULT_MGMT_POOL,
        raw.mgmt_prefix,
        24,
        None,
    );
    if let Some(h) = host {
        // Nodes sit at .10-.12 and .20-.29 of the subnet: a /27 is the smallest that holds them.
        if h.prefix > 27 {
            errors.push(SettingError::new(
                "host_prefix",
                format!("a /{} subnet cannot hold the nodes (.10 to .29): use 27 or less", h.prefix),
            ));
        }
    }
    let ttl = match parse_bounded_duration(
        raw.reservation_ttl.as_deref().unwrap_or(DEFAULT_RESERVATION_TTL),
        MAX_RESERVATION_TTL,
    ) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(SettingError::new("reservation_ttl", e));
            None
        }
    };
    let built: Vec<(Kind, Pool)> = [
        (Kind::Subnet, host),
        (Kind::PodCidr, pod),
        (Kind::ServiceCidr, service),
        (Kind::MgmtCidr, mgmt),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect();
    for (i, (ka, pa)) in built.iter().enumerate() {
        for (kb, pb) in built.iter().skip(i + 1) {
            if net::overlaps(&pa.cidr, &pb.cidr) {
                errors.push(SettingError::new(
                    kb.pool_attribute(),
                    format!(
                        "{} overlaps {} = {}: the pools must be disjoint",
                        pb.cidr,
                        ka.pool_attribute(),
                        pa.cidr
                    ),
                ));
            }
        }
    }
    let etcd = match raw.etcd.as_ref().map(etcd_config) {
        Some(Ok(c)) => Some(c),
        Some(Err(more)) => {
            errors.extend(more);
            None
        }
        None => None,
    };
    if let (true, Some(host), Some(pod), Some(service), Some(mgmt), Some(ttl)) =
        (errors.is_empty(), host, pod, service, mgmt, ttl)
    {
        return Ok(Settings {
            home: raw
                .home
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(default_home),
            pools: Pools {
                host,
                pod,
                service,
                mgmt,
            },
            reservation_ttl: ttl,
            etcd,
        });
    }
    Err(errors)
}

/// [`parse_duration`], longer than zero and at most `max`.
pub fn parse_bounded_duration(text: &str, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| format!("{e}; the maximum is {}h", max.as_secs() / 3600))?;
    if d.is_zero() {
        return Err(format!("`{text}` is no time at all: it must be longer than 0s"));
    }
    if d > max {
        return Err(format!(
            "`{text}` is longer than the maximum of {}h ({} s)",
            max.as_secs() / 3600,
            max.as_secs()
        ));
    }
    Ok(d)
}

/// Parse a Go-style duration as Terraform users write them: `24h`, `10m`, `90s`, `1h30m`.
/// Anything longer than about 31 years is refused (no sensible duration is, and larger ones
/// cannot be added to a date).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (examples: 30s, 10m, 24h, 1h30m)");
    if text.is_empty() || text.len() > 64 {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    const LIMIT_SECS: f64 = 1e9;
    if !(total.is_finite() && total <= LIMIT_SECS) {
        return Err(format!("`{text}` is far too long to be a duration (more than 31 years)"));
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Check that `home` can be the registry's folder: a folder, or a path whose nearest existing
/// ancestor is one (the registry creates the rest on its first write).
pub fn check_home(home: &std::path::Path) -> Result<(), SettingError> {
    let mut at = Some(home);
    while let Some(p) = at {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                let what = if p == home {
                    format!("{} is a file, not a folder", home.display())
                } else {
                    format!("{} cannot be created: {} is a file, not a folder", home.display(), p.display())
                };
                return Err(SettingError::new(
                    "home",
                    format!("{what}. `home` is the folder that holds the instance registry (instances.json), its event log and the instance folders: point it at a folder (it is created when missing), or unset it for $HOMELAB_HOME, else ~/.homelab"),
                ));
            }
            Err(_) => at = p.parent(),
        }
    }
    Ok(())
}

/// Parse and check a CIDR given for an attribute (canonical, not a special-purpose range).
pub fn cidr_setting(attribute: &'static str, text: &str) -> Result<Ipv4Net, SettingError> {
    net::parse_lab_network(text).map_err(|e| SettingError::new(attribute, e.to_string()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn backend_choices_are_typed_once_and_every_problem_is_named() {
        let c = backend_choices(&RawChoices::default()).unwrap();
        assert_eq!((c.default_backend, c.hypervisor, c.libvirt_driver), (BackendKind::Vagrant, Hypervisor::VirtualBox, LibvirtDriver::Kvm));
        assert_eq!((c.netns_host.as_str(), c.vagrant_bin.as_str()), (DEFAULT_NETNS_HOST, "vagrant"));
        let c = backend_choices(&RawChoices {
            default_backend: Some("netns".into()),
            hypervisor: Some("libvirt".into()),
            libvirt_driver: Some("qemu".into()),
            netns_host: Some("lab2".into()),
            vagrant_bin: Some("/opt/vagrant".into()),
        })
        .unwrap();
        assert_eq!((c.default_backend, c.hypervisor, c.libvirt_driver), (BackendKind::Netns, Hypervisor::Libvirt, LibvirtDriver::Qemu));
        let errors = backend_choices(&RawChoices {
            default_backend: Some("docker".into()),
            hypervisor: Some("VirtualBox".into()),
            libvirt_driver: Some("xen".into()),
            netns_host: Some("lab-2".into()),
            vagrant_bin: Some(String::new()),
        })
        .unwrap_err();
        let attrs: Vec<&str> = errors.iter().map(|e| e.attribute).collect();
        assert_eq!(attrs, ["default_backend", "hypervisor", "libvirt_driver", "netns_host", "vagrant_bin"]);
        assert!(errors[1].message.contains("\"VirtualBox\" is not one of: virtualbox, libvirt"), "{}", errors[1].message);
    }

    use super::*;

    #[test]
    fn defaults_are_the_documented_pools() {
        let s = validate(&RawSettings::default()).unwrap();
        assert_eq!(s.pools.host.cidr.to_string(), "192.168.56.0/21");
        assert_eq!(s.pools.host.capacity(), 8);
        assert_eq!(s.pools.pod.first.to_string(), "10.244.0.0/16");
        assert_eq!(s.pools.pod.capacity(), 16);
        assert_eq!(s.pools.service.first.to_string(), "10.96.0.0/16");
        assert_eq!(s.reservation_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn non_canonical_pool_names_attribute_and_suggests_fix() {
        let raw = RawSettings {
            pod_pool: Some("10.244.0.0/12".into()),
            ..Default::default()
        };
        let errs = validate(&raw).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].attribute, "pod_pool");
        assert!(errs[0].message.contains("10.240.0.0/12"), "{}", errs[0].message);
    }

    #[test]
    fn overlapping_pools_are_refused() {
        let raw = RawSettings {
            service_pool: Some("10.240.0.0/16".into()),
            ..Default::default()
        };
        let errs = validate(&raw).unwrap_err();
        assert!(errs.iter().any(|e| e.attribute == "service_pool" && e.message.contains("pod_pool")), "{errs:?}");
    }

    #[test]
    fn prefix_that_does_not_fit_names_prefix_attribute() {
        let raw = RawSettings {
            host_prefix: Some(20),
            ..Default::default()
        };
        let errs = validate(&raw).unwrap_err();
        assert_eq!(errs[0].attribute, "host_prefix");
    }

    #[test]
    fn huge_or_zero_durations_are_refused_not_a_panic() {
        for text in ["9999999999h", "99999999999999999999s", "1e400h", "100000000000000000000000000000000000000000000000000000000000000h"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        let raw = RawSettings {
            reservation_ttl: Some("9999999999h".into()),
            ..Default::default()
        };
        let errs = validate(&raw).unwrap_err();
        assert_eq!(errs[0].attribute, "reservation_ttl");
        let raw = RawSettings {
            reservation_ttl: Some("721h".into()),
            ..Default::default()
        };
        let errs = validate(&raw).unwrap_err();
        assert!(errs[0].message.contains("maximum of 720h"), "{}", errs[0].message);
        assert_eq!(parse_bounded_duration("720h", MAX_RESERVATION_TTL).unwrap(), MAX_RESERVATION_TTL);
        assert!(parse_bounded_duration("0s", MAX_TIMEOUT).unwrap_err().contains("longer than 0s"));
        assert!(parse_bounded_duration("25h", MAX_TIMEOUT).unwrap_err().contains("maximum of 24h"));
    }

    #[test]
    fn home_that_is_a_file_is_refused_naming_home() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = check_home(&file).unwrap_err();
        assert_eq!(e.attribute, "home");
        assert!(e.message.contains("is a file, not a folder"), "{}", e.message);
        let e = check_home(&file.join("below")).unwrap_err();
        assert!(e.message.contains("cannot be created"), "{}", e.message);
        assert!(check_home(&dir.path().join("new/deeper")).is_ok());
        assert!(check_home(dir.path()).is_ok());
    }

    #[test]
    fn pools_in_special_purpose_ranges_are_refused() {
        let raw = RawSettings {
            pod_pool: Some("224.0.0.0/4".into()),
            host_pool: Some("127.0.0.0/21".into()),
            ..Default::default()
        };
        let errs = validate(&raw).unwrap_err();
        assert!(errs.iter().any(|e| e.attribute == "pod_pool" && e.message.contains("multicast")), "{errs:?}");
        assert!(errs.iter().any(|e| e.attribute == "host_pool" && e.message.contains("loopback")), "{errs:?}");
    }

    #[test]
    fn durations_parse_like_terraform_timeouts() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
    }
}
