//! Helpers for tests that build real network namespaces: unique lab host names, guards that
//! delete every namespace a test made (also when it panics), lab specs, reading interfaces and
//! routes back with `ip -j`, pings from inside a node, and a snapshot of the root namespace to
//! prove it was left alone.
//!
//! Every name a test uses starts with its own lab host name (`hlt<pid>n<counter>`), so tests can
//! run in parallel, and in parallel with other test runs.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use homelab::backend::{plan_nodes, LabSpec, OpControl};
use homelab::net::{self, Ipv4Net};
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A lab host (or test namespace) name no other test or test run uses: `hlt<pid>n<counter>`.
pub fn unique_host() -> String {
    format!(
        "hlt{}n{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Named namespaces that exist now.
pub fn netns_list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Named namespaces of one lab host: the host itself and every `<host>-…`.
pub fn namespaces_of(host: &str) -> Vec<String> {
    let prefix = format!("{host}-");
    netns_list()
        .into_iter()
        .filter(|n| n == host || n.starts_with(&prefix))
        .collect()
}

/// Whether the named namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Deletes, when dropped, the lab host namespace `name`, every namespace named `<name>-…`, and
/// the lock and marker files the code under test keeps for it. Veths die with their
/// namespaces, so nothing of the test survives it, whatever state the test stopped in.
pub struct LabHostGuard {
    /// The lab host name.
    pub name: String,
}

impl LabHostGuard {
    /// A guard for a fresh unique lab host name (nothing is created yet).
    pub fn new() -> Self {
        LabHostGuard {
            name: unique_host(),
        }
    }
}

impl Drop for LabHostGuard {
    fn drop(&mut self) {
        for ns in namespaces_of(&self.name) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        for dir in ["/run/lock", "/run/homelab"] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let lock =
                    file.starts_with("homelab-") && file.ends_with(&format!("-{}.lock", self.name));
                let marker = file.starts_with(&format!("iptables-netns-{}.", self.name));
                if lock || marker {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Run a command to completion; panics with its stderr when it fails.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command and return (success, stdout + stderr).
pub fn try_sh(argv: &[&str]) -> (bool, String) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The spec of instance `name` on `subnet` with the given node counts (gateway .1).
pub fn lab_spec(name: &str, subnet: &str, control_planes: u32, workers: u32) -> LabSpec {
    let subnet: Ipv4Net = subnet.parse().unwrap();
    LabSpec {
        instance: name.into(),
        subnet,
        gateway: net::gateway(&subnet),
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        mgmt_cidr: None,
        nodes: plan_nodes(name, &subnet, control_planes, workers).unwrap(),
        pods_per_node: 1,
        vagrant: None,
    }
}

/// A control with a generous timeout.
pub fn ctl() -> OpControl {
    OpControl::with_timeout(Duration::from_secs(60))
}

/// `ip -n <ns> -j <args…>` parsed (an empty listing is `[]`).
pub fn ip_json(ns: &str, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["ip", "-n", ns, "-j"];
    argv.extend_from_slice(args);
    let text = sh(&argv);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{argv:?}: {e}: {text}"))
}

/// Interface names in a namespace.
pub fn links(ns: &str) -> Vec<String> {
    let mut names: Vec<String> = ip_json(ns, &["link", "show"])
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// One interface's JSON (`ip -d -j addr show dev <dev>`), if it exists.
pub fn link(ns: &str, dev: &str) -> Option<Value> {
    ip_json(ns, &["-d", "addr", "show"])
        .into_iter()
        .find(|l| l["ifname"].as_str() == Some(dev))
}

/// IPv4 addresses of an interface as `a.b.c.d/n`.
pub fn addrs(ns: &str, dev: &str) -> Vec<String> {
    link(ns, dev)
        .map(|l| {
            l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an interface is administratively up.
pub fn is_up(ns: &str, dev: &str) -> bool {
    link(ns, dev).is_some_and(|l| {
        l["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"))
    })
}

/// IPv4 routes of the main table as `dst [via gw] dev d`, sorted.
pub fn routes(ns: &str) -> Vec<String> {
    let mut out: Vec<String> = ip_json(ns, &["-4", "route", "show", "table", "main"])
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap_or("?").to_string();
            if let Some(gw) = r["gateway"].as_str() {
                s.push_str(&format!(" via {gw}"));
            }
            if let Some(dev) = r["dev"].as_str() {
                s.push_str(&format!(" dev {dev}"));
            }
            s
        })
        .collect();
    out.sort();
    out
}

/// The inode of a named namespace: the same namespace keeps it, a re-created one does not.
pub fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(Path::new("/run/netns").join(name))
        .unwrap_or_else(|e| panic!("netns {name}: {e}"))
        .ino()
}

/// A sysctl inside a namespace.
pub fn sysctl(ns: &str, key: &str) -> String {
    sh(&["ip", "netns", "exec", ns, "sysctl", "-n", key])
        .trim()
        .to_string()
}

/// One ping from inside namespace `from` to `to`: (answered, ping's output).
pub async fn ping(from: &str, to: Ipv4Addr) -> (bool, String) {
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            from,
            "ping",
            "-n",
            "-c1",
            "-W1",
            &to.to_string(),
        ])
        .output()
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Pings all `(from namespace, to address)` pairs at once; answers in the same order.
pub async fn ping_all(pairs: &[(String, Ipv4Addr)]) -> Vec<(bool, String)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (from, to)) in pairs.iter().cloned().enumerate() {
        set.spawn(async move { (i, ping(&from, to).await) });
    }
    let mut out = vec![(false, String::new()); pairs.len()];
    while let Some(r) = set.join_next().await {
        let (i, answer) = r.unwrap();
        out[i] = answer;
    }
    out
}

/// What the root namespace's networking looks like: addresses, routes, forwarding, firewall.
/// Taken before and after a test to prove the test left it alone.
#[derive(Debug, PartialEq, Eq)]
pub struct RootNetSnapshot {
    addrs: String,
    routes: String,
    ip_forward: String,
    ruleset: String,
}

impl RootNetSnapshot {
    /// Read the root namespace now (read-only commands only).
    pub fn take() -> Self {
        RootNetSnapshot {
            addrs: sh(&["ip", "-br", "addr", "show"]),
            routes: sh(&["ip", "route", "show", "table", "all"]),
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            ruleset: sh(&["nft", "list", "ruleset"]),
        }
    }
}
