//! How the provider reaches the etcd cluster: [`EtcdConfig`] (the provider block's `etcd { … }`,
//! or an `etcd://` URL of the commands), and what is wrong with one before anything is contacted.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// How the provider reaches the etcd cluster (the provider block's `etcd { … }`).
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs (`http://…` or, with TLS, `https://…`).
    pub endpoints: Vec<String>,
    /// Key prefix every host of one team shares (ends with `/`).
    pub prefix: String,
    /// CA that signed the members' certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), when the cluster asks for client certificates.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// User name and password, when the cluster has auth enabled.
    pub user: Option<(String, SecretString)>,
    /// How long one request may take before the next member is tried.
    pub timeout: Duration,
}

impl PartialEq for EtcdConfig {
    fn eq(&self, other: &Self) -> bool {
        let user = |c: &EtcdConfig| c.user.as_ref().map(|(n, p)| (n.clone(), p.expose_secret().to_string()));
        self.endpoints == other.endpoints
            && self.prefix == other.prefix
            && self.ca_file == other.ca_file
            && self.identity == other.identity
            && self.timeout == other.timeout
            && user(self) == user(other)
    }
}

impl Eq for EtcdConfig {}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/homelab/";

impl EtcdConfig {
    /// A configuration of `endpoints` under `prefix`, without TLS or auth.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            ca_file: None,
            identity: None,
            user: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// What is wrong with this configuration, before anything is contacted (for plan-time
    /// diagnostics): (attribute, message) pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.endpoints.is_empty() {
            out.push(("endpoints", "at least one endpoint is needed, e.g. \"http://127.0.0.1:2379\"".to_string()));
        }
        let tls = self.ca_file.is_some() || self.identity.is_some();
        for e in &self.endpoints {
            let host = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")).map(|h| h.trim_end_matches('/'));
            let port_ok = host.and_then(|h| h.rsplit_once(':')).is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                out.push(("endpoints", format!("{e:?} is not a client URL such as \"http://127.0.0.1:2379\"")));
            } else if tls && e.starts_with("http://") {
                out.push(("endpoints", format!("{e:?} is plain http, but ca_file/cert_file are set: use https:// endpoints with TLS")));
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            out.push(("prefix", format!("{:?} must start and end with \"/\", e.g. \"/homelab/\"", self.prefix)));
        }
        for (attr, path) in [("ca_file", self.ca_file.as_ref()), ("cert_file", self.identity.as_ref().map(|i| &i.0)), ("key_file", self.identity.as_ref().map(|i| &i.1))] {
            if let Some(p) = path {
                if !p.is_file() {
                    out.push((attr, format!("{} is not a readable file", p.display())));
                }
            }
        }
        if let Some((name, _)) = &self.user {
            if name.is_empty() {
                out.push(("username", "must not be empty when password is set".to_string()));
            }
        }
        out
    }

    /// `etcd://host:port,host:port/prefix/` (or `etcds://` for TLS), for messages and the CLI.
    pub fn url(&self) -> String {
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/'))
            .collect();
        format!("{}://{}{}", if tls { "etcds" } else { "etcd" }, hosts.join(","), self.prefix)
    }

    /// Parse `etcd://h1:p1,h2:p2/prefix/` (`etcds://` for https). The TLS files and the user
    /// are set apart (CLI flags or environment).
    pub fn parse_url(url: &str) -> Result<EtcdConfig, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an etcd URL such as etcd://127.0.0.1:2379/homelab/"))?;
        let http = match scheme {
            "etcd" => "http",
            "etcds" => "https",
            _ => return Err(format!("{url:?}: the scheme must be etcd:// (or etcds:// for TLS)")),
        };
        let (hosts, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_PREFIX),
        };
        if hosts.is_empty() {
            return Err(format!("{url:?} names no endpoint"));
        }
        let mut prefix = path.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let endpoints = hosts.split(',').map(|h| format!("{http}://{h}")).collect();
        Ok(EtcdConfig::new(endpoints, prefix))
    }
}
