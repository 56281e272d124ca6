//! The `netns` backend: a lab without VMs. The lab's host is a named network namespace
//! (`homelab` by default, never the root namespace); each instance is a bridge in it holding the
//! gateway address; each node is a namespace of its own, wired to the bridge by a veth pair,
//! with its address, loopback up, and no route beyond its own subnet.
//!
//! Names (all deterministic, so every run finds what an earlier run made):
//! - node namespace: `<host_ns>-<node>` (`homelab-acme-cp-1`);
//! - bridge: `hlb` + the subnet's network address in 8 hex digits (`hlbc0a83800`);
//! - lab-host end of a node's veth: `hlv` + the same 8 digits + the node's offset in the subnet
//!   in 2 hex digits (`hlvc0a838000a` for .10); the node end is always `eth0`.
//!
//! Interface names stay within Linux's 15 characters and cannot collide, because the registry
//! hands out disjoint subnets (distinct network addresses) and node offsets are distinct inside
//! a subnet.
//!
//! Both ends of every veth are born inside namespaces (`ip -n <lab host> link add … peer name
//! eth0 netns <node>`), so nothing is ever created in, or sent from, the root namespace.
//! Commands are grouped with `ip -batch -` to keep bring-up of a 3-node instance to a handful of
//! process spawns.
//!
//! Concurrency: several provider processes may converge different instances of one lab host at
//! once. What they share (the lab host namespace itself, its sysctls and nftables base table,
//! and the decision to delete the lab host when its last bridge goes) is changed under a
//! [`HostLock`] per lab host; per-instance work (its bridge's ports, its node namespaces) is
//! disjoint between instances and needs no lock.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::pods::{self as pods_plan, NodePods};
use super::{
    Backend, BackendError, LabSpec, LabStatus, NodeStatus, OpControl, PodRoute, ProbeOutcome,
    CONTROL_PLANE_OFFSET,
    WORKER_OFFSET,
};
use crate::hostnet::host::{find_program, has_cap_net_admin, HostLock};
use crate::hostnet::nft::NftForwarding;
use crate::hostnet::{ip, Forwarding, HostNetError};
use crate::net::{self, Ipv4Net};
use crate::process::{self, Cmd, CommandError, Output};

mod pods;
mod probe;
pub use pods::{pod_netns, POD_IFACE_PREFIX};

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of instance bridges in the lab host.
pub const BRIDGE_PREFIX: &str = "hlb";
/// Prefix of the lab-host ends of node veths.
pub const VETH_PREFIX: &str = "hlv";
/// The node end of its veth.
pub const NODE_IFACE: &str = "eth0";

/// The bridge of the instance whose subnet is `subnet`: `hlb` + 8 hex digits of its network
/// address (`192.168.56.0/24` → `hlbc0a83800`). 11 characters.
pub fn bridge_name(subnet: &Ipv4Net) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", u32::from(subnet.network()))
}

/// The fixed link-layer address of the bridge of `subnet`: locally administered `02:68` + the
/// subnet's network address (`192.168.56.0/24` → `02:68:c0:a8:38:00`). Without one, a Linux
/// bridge takes the lowest address of its ports, so adding a node could change the gateway's
/// address under the other nodes' ARP caches (their traffic through the gateway then stalls
/// until the entries expire).
pub fn bridge_mac(subnet: &Ipv4Net) -> String {
    let o = subnet.network().octets();
    format!("02:68:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The lab-host end of the veth of the node at `ip`: `hlv` + 8 hex digits of the subnet's network
/// + 2 hex digits of the node's offset (`.10` → `hlvc0a838000a`). 13 characters. `None` when
///   `ip` is outside the subnet or its offset does not fit in two digits.
pub fn veth_name(subnet: &Ipv4Net, ip: Ipv4Addr) -> Option<String> {
    let offset = net::offset_in(subnet, ip)?;
    (offset < 0x100).then(|| {
        format!(
            "{VETH_PREFIX}{:08x}{offset:02x}",
            u32::from(subnet.network())
        )
    })
}

/// The namespace of a node: `<host_ns>-<node name>`.
pub fn node_netns(host_ns: &str, node: &str) -> String {
    format!("{host_ns}-{node}")
}

/// Whether `rest` (a node name without its `<instance>-`) is a node of the naming plan:
/// exactly `cp-N` or `worker-N`. Exact, so that instance `acme` never claims the nodes of an
/// instance called `acme-worker`.
fn is_node_suffix(rest: &str) -> bool {
    let digits = rest
        .strip_prefix("cp-")
        .or_else(|| rest.strip_prefix("worker-"));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The address the naming plan gives the node `rest` (`cp-2` → .11, `worker-1` → .20).
fn planned_ip(subnet: &Ipv4Net, rest: &str) -> Option<Ipv4Addr> {
    let (base, n) = if let Some(n) = rest.strip_prefix("cp-") {
        (CONTROL_PLANE_OFFSET, n)
    } else {
        (WORKER_OFFSET, rest.strip_prefix("worker-")?)
    };
    let n: u32 = n.parse().ok()?;
    net::nth_address(subnet, base.checked_add(n.checked_sub(1)?)?)
}

/// Check the static prerequisites: CAP_NET_ADMIN in `cap_eff`, `ip` and `nft` present.
pub fn check_prerequisites(
    cap_eff: u64,
    have_ip: bool,
    have_nft: bool,
) -> Result<(), BackendError> {
    if !has_cap_net_admin(cap_eff) {
        return Err(BackendError::Unavailable {
            what: "the netns backend needs CAP_NET_ADMIN to create network namespaces, bridges and veths, and this provider process does not have it".into(),
            fix: "run Terraform as root (`sudo -E terraform apply`), or give the provider binary the capabilities (`sudo setcap cap_net_admin,cap_sys_admin+ep terraform-provider-homelab`), or choose backend = \"vagrant\"".into(),
        });
    }
    if !have_ip {
        return Err(BackendError::Unavailable {
            what: "the netns backend needs the `ip` command, which is not on PATH".into(),
            fix: "install the Debian package `iproute2` (apt-get install iproute2)".into(),
        });
    }
    if !have_nft {
        return Err(BackendError::Unavailable {
            what: "the netns backend needs the `nft` command (its lab host firewall), which is not on PATH".into(),
            fix: "install the Debian package `nftables` (apt-get install nftables)".into(),
        });
    }
    Ok(())
}

fn hostnet_err(e: HostNetError) -> BackendError {
    match e {
        HostNetError::Command(c) => BackendError::Command(c),
        other => BackendError::Other(other.to_string()),
    }
}

/// One interface as `ip -d -j addr show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IfView {
    /// Administratively up.
    up: bool,
    /// `linkinfo.info_kind` (`bridge`, `veth`, …).
    kind: Option<String>,
    /// The bridge it is attached to.
    master: Option<String>,
    /// IPv4 addresses with their prefix.
    addrs: Vec<(Ipv4Addr, u8)>,
    /// The link-layer address (`ip` listings only; the in-process reader leaves it out).
    mac: Option<String>,
}

impl IfView {
    fn has_addr(&self, ip: Ipv4Addr, prefix: u8) -> bool {
        self.addrs.contains(&(ip, prefix))
    }
}

/// The interfaces of one namespace, by name.
type NsView = HashMap<String, IfView>;

/// Shared lab-host views by namespace: when each was taken, and the view (`None`: no such namespace).
type HostViews = HashMap<String, (std::time::Instant, Option<NsView>)>;

/// How long reads may share one view of a lab host.
const HOST_VIEW_TTL: std::time::Duration = std::time::Duration::from_millis(1500);

/// Lab-host views shared by the reads of one refresh. Terraform refreshes every instance of a
/// configuration at once and each read needs the same lab-host interfaces; one `ip` call then
/// serves them all. A view lives at most [`HOST_VIEW_TTL`], only `observe` takes and uses it,
/// and this process forgets it as soon as it changes that lab host (converge, teardown).
fn host_views() -> &'static tokio::sync::Mutex<HostViews> {
    static VIEWS: std::sync::OnceLock<tokio::sync::Mutex<HostViews>> = std::sync::OnceLock::new();
    VIEWS.get_or_init(|| tokio::sync::Mutex::new(HashMap::new()))
}

/// The interfaces of a node namespace read in-process: a short-lived thread joins the
/// namespace (`setns`) and lists its interfaces with `getifaddrs`, then exits, so no other thread
/// ever changes namespace. Refreshing a configuration reads every node; spawning `ip` for each
/// one costs more than the rest of the read together. `Ok(None)`: the namespace does not exist.
/// Only `up` and the IPv4 addresses are filled in (all a node's check needs).
fn node_view_in_process(ns: &str) -> std::io::Result<Option<NsView>> {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(Path::new(NETNS_DIR).join(ns)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> std::io::Result<NsView> {
                // SAFETY: setns only changes this thread's network namespace, and this thread
                // ends right after; getifaddrs' list is only read before freeifaddrs.
                unsafe {
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
                    if libc::getifaddrs(&mut list) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut view = NsView::new();
                    let mut cur = list;
                    while !cur.is_null() {
                        let ifa = &*cur;
                        cur = ifa.ifa_next;
                        if ifa.ifa_name.is_null() {
                            continue;
                        }
                        let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                        let entry = view.entry(name).or_default();
                        entry.up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
                        if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
                            let prefix = if ifa.ifa_netmask.is_null() {
                                32
                            } else {
                                let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
                            };
                            entry.addrs.push((ip, prefix));
                        }
                    }
                    libc::freeifaddrs(list);
                    Ok(view)
                }
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace reader thread panicked")))
    })
    .map(Some)
}

/// A file under `/proc/sys` as the namespace `ns` sees it (`net/ipv4/ip_forward`), read by a
/// short-lived thread that joins the namespace, like [`node_view_in_process`]. `Ok(None)`: the
/// namespace does not exist.
fn sysctl_in_process(ns: &str, key: &str) -> std::io::Result<Option<String>> {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(Path::new(NETNS_DIR).join(ns)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = Path::new("/proc/sys").join(key);
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> std::io::Result<String> {
                // SAFETY: setns only changes this thread's network namespace, and this thread
                // ends right after reading one file.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(std::fs::read_to_string(&path)?.trim().to_string())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace reader thread panicked")))
    })
    .map(Some)
}

/// The interfaces of `ip -d -j addr show` by name (through the typed reader, `hostnet::ip`).
fn parse_links(text: &str) -> Result<NsView, String> {
    Ok(ip::links(text)?
        .into_iter()
        .map(|l| {
            let view = IfView {
                up: l.up,
                kind: l.kind,
                master: l.master,
                addrs: l.addrs.iter().map(|a| (a.local, a.prefix)).collect(),
                mac: l.mac,
            };
            (l.name, view)
        })
        .collect())
}

/// A named namespace exists (its file under `/run/netns`).
fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// `ip -n <ns> -batch -` (or plain `ip -batch -`) fed `lines`; the error shows the lines.
async fn run_batch(
    ns: Option<&str>,
    lines: &[String],
    op: Option<&Op<'_>>,
) -> Result<(), BackendError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut argv = vec!["ip"];
    if let Some(ns) = ns {
        argv.extend(["-n", ns]);
    }
    argv.extend(["-batch", "-"]);
    let text = lines.join("\n") + "\n";
    let cmd = Cmd::new(argv).with_stdin(text.clone());
    let result = match op {
        Some(op) => op.run(&cmd).await.map(|_| ()),
        None => process::run(&cmd)
            .await
            .map(|_| ())
            .map_err(BackendError::from),
    };
    result.map_err(|e| match e {
        BackendError::Command(CommandError::Failed {
            cmd,
            status,
            code,
            stderr,
            stdout,
        }) => BackendError::Command(CommandError::Failed {
            cmd: format!("{cmd} <<EOF\n{text}EOF"),
            status,
            code,
            stderr,
            stdout,
        }),
        other => other,
    })
}

/// A running operation: its deadline and Terraform's stop signal, checked between steps and
/// while a command runs (a command cut short is killed: `process::run` kills on drop).
struct Op<'a> {
    ctl: &'a OpControl,
    deadline: Instant,
}

impl<'a> Op<'a> {
    fn new(ctl: &'a OpControl) -> Self {
        Op {
            ctl,
            deadline: Instant::now() + ctl.timeout,
        }
    }

    fn check(&self, step: &str) -> Result<(), BackendError> {
        if self.ctl.cancel.is_cancelled() {
            return Err(BackendError::Cancelled {
                running: step.into(),
            });
        }
        if Instant::now() >= self.deadline {
            return Err(BackendError::Timeout {
                timeout: self.ctl.timeout,
                running: step.into(),
            });
        }
        Ok(())
    }

    fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    async fn run(&self, cmd: &Cmd) -> Result<Output, BackendError> {
        let shown = cmd.to_string();
        self.check(&shown)?;
        tokio::select! {
            r = tokio::time::timeout_at(self.deadline, process::run(cmd)) => match r {
                Ok(out) => out.map_err(BackendError::from),
                Err(_) => Err(BackendError::Timeout { timeout: self.ctl.timeout, running: shown }),
            },
            _ = self.ctl.cancel.cancelled() => Err(BackendError::Cancelled { running: shown }),
        }
    }
}

/// What observing one node found.
struct NodeFinding {
    netns: String,
    veth: String,
    /// The namespace exists.
    exists: bool,
    /// Its interfaces (empty when it does not exist).
    view: NsView,
    /// What is wrong (empty: healthy).
    problems: Vec<String>,
}

/// The `netns` backend for one lab host namespace.
#[derive(Debug, Clone)]
pub struct NetnsBackend {
    host_ns: String,
    nft: Arc<NftForwarding>,
}

impl NetnsBackend {
    /// A backend whose lab host is the named namespace `host_ns` (provider default `homelab`).
    pub fn new(host_ns: impl Into<String>) -> Self {
        let host_ns = host_ns.into();
        NetnsBackend {
            nft: Arc::new(NftForwarding::new(host_ns.clone())),
            host_ns,
        }
    }

    /// The lab host namespace.
    pub fn host_ns(&self) -> &str {
        &self.host_ns
    }

    /// The namespace of node `node` of this lab host.
    pub fn node_netns(&self, node: &str) -> String {
        node_netns(&self.host_ns, node)
    }

    /// The nftables forwarding of this lab host, as its concrete type.
    pub fn nft(&self) -> Arc<NftForwarding> {
        self.nft.clone()
    }

    /// The pods of every node of `spec` (see [`crate::backend::pods`]).
    fn pod_plan(spec: &LabSpec) -> Result<Vec<NodePods>, BackendError> {
        pods_plan::plan(&spec.instance, &spec.pod_cidr, &spec.nodes, spec.pods_per_node)
            .map_err(|e| BackendError::Other(format!("instance {}: {e}", spec.instance)))
    }

    fn validate(spec: &LabSpec) -> Result<(), BackendError> {
        Self::pod_plan(spec)?;
        for node in &spec.nodes {
            let ok = node
                .name
                .strip_prefix(&format!("{}-", spec.instance))
                .is_some_and(is_node_suffix);
            if !ok {
                return Err(BackendError::Other(format!(
                    "node `{}` does not follow the naming plan `{}-cp-N` / `{}-worker-N`",
                    node.name, spec.instance, spec.instance
                )));
            }
            if veth_name(&spec.subnet, node.ip).is_none() {
                return Err(BackendError::Other(format!(
                    "node `{}` address {} is not among the first 256 addresses of subnet {}",
                    node.name, node.ip, spec.subnet
                )));
            }
        }
        Ok(())
    }

    /// Node namespaces of this instance that exist, as node names (`acme-cp-1`), sorted.
    fn existing_nodes(&self, instance: &str) -> Vec<String> {
        let prefix = format!("{}-{instance}-", self.host_ns);
        let mut found: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| {
                let rest = name.strip_prefix(&prefix)?;
                is_node_suffix(rest).then(|| format!("{instance}-{rest}"))
            })
            .collect();
        found.sort();
        found
    }

    /// Interfaces of a namespace; `None` when the namespace does not exist (or vanished).
    async fn ns_view(ns: &str) -> Result<Option<NsView>, BackendError> {
        if !netns_exists(ns) {
            return Ok(None);
        }
        let cmd = Cmd::new(["ip", "-n", ns, "-d", "-j", "addr", "show"]);
        match process::run(&cmd).await {
            Ok(out) => parse_links(&out.stdout).map(Some).map_err(|why| {
                BackendError::Other(format!("could not read the output of `{cmd}`: {why}"))
            }),
            Err(_) if !netns_exists(ns) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A node's interfaces: in-process when this process may join namespaces, else with `ip`.
    async fn node_view(ns: &str) -> Result<Option<NsView>, BackendError> {
        let name = ns.to_string();
        match tokio::task::spawn_blocking(move || node_view_in_process(&name)).await {
            Ok(Ok(view)) => Ok(view),
            _ => Self::ns_view(ns).await,
        }
    }

    fn bridge_problems(&self, spec: &LabSpec, host: Option<&NsView>) -> Vec<String> {
        let br = bridge_name(&spec.subnet);
        let prefix = spec.subnet.prefix_len();
        let Some(host) = host else {
            return vec![format!(
                "lab host network namespace {} is missing",
                self.host_ns
            )];
        };
        let mut problems = Vec::new();
        match host.get(&br) {
            None => problems.push(format!("bridge {br} is missing in netns {}", self.host_ns)),
            Some(i) => {
                if i.kind.as_deref() != Some("bridge") {
                    problems.push(format!(
                        "{br} in netns {} is a {}, not a bridge",
                        self.host_ns,
                        i.kind.as_deref().unwrap_or("plain interface")
                    ));
                }
                if !i.up {
                    problems.push(format!("bridge {br} is down"));
                }
                if !i.has_addr(spec.gateway, prefix) {
                    problems.push(format!(
                        "bridge {br} has no address {}/{prefix}",
                        spec.gateway
                    ));
                }
            }
        }
        if host.get("lo").is_some_and(|lo| !lo.up) {
            problems.push(format!("lo is down in lab host netns {}", self.host_ns));
        }
        problems
    }

    async fn observe_node(
        &self,
        spec: &LabSpec,
        node: &super::NodeSpec,
        host: Option<&NsView>,
        node_pods: Option<&NodePods>,
    ) -> Result<NodeFinding, BackendError> {
        let netns = self.node_netns(&node.name);
        let veth = veth_name(&spec.subnet, node.ip).unwrap_or_default();
        let br = bridge_name(&spec.subnet);
        let prefix = spec.subnet.prefix_len();
        let Some(view) = Self::node_view(&netns).await? else {
            return Ok(NodeFinding {
                netns,
                veth,
                exists: false,
                view: NsView::new(),
                problems: vec!["missing".into()],
            });
        };
        let mut problems = Vec::new();
        if view.get("lo").is_some_and(|lo| !lo.up) {
            problems.push("lo is down".to_string());
        }
        match view.get(NODE_IFACE) {
            None => problems.push(format!("{NODE_IFACE} is missing")),
            Some(eth) => {
                if !eth.up {
                    problems.push(format!("{NODE_IFACE} is down"));
                }
                if !eth.has_addr(node.ip, prefix) {
                    problems.push(format!("{NODE_IFACE} has no address {}/{prefix}", node.ip));
                }
                for (ip, len) in &eth.addrs {
                    if (*ip, *len) != (node.ip, prefix) {
                        problems.push(format!("{NODE_IFACE} has unexpected address {ip}/{len}"));
                    }
                }
            }
        }
        if let Some(np) = node_pods {
            problems.extend(pods::node_problems(&self.host_ns, np, &view).await?);
        }
        match host.and_then(|h| h.get(&veth)) {
            None => problems.push(format!("veth {veth} is missing in netns {}", self.host_ns)),
            Some(v) => {
                if v.master.as_deref() != Some(br.as_str()) {
                    problems.push(format!("veth {veth} is not attached to bridge {br}"));
                }
                if !v.up {
                    problems.push(format!("veth {veth} is down"));
                }
            }
        }
        Ok(NodeFinding {
            netns,
            veth,
            exists: true,
            view,
            problems,
        })
    }

    /// Extra node names and lab-host veths of this subnet that belong to no spec node.
    fn strays(&self, spec: &LabSpec, host: Option<&NsView>) -> (Vec<String>, Vec<String>) {
        let extra: Vec<String> = self
            .existing_nodes(&spec.instance)
            .into_iter()
            .filter(|n| !spec.nodes.iter().any(|s| &s.name == n))
            .collect();
        let mut expected: Vec<String> = spec
            .nodes
            .iter()
            .filter_map(|n| veth_name(&spec.subnet, n.ip))
            .collect();
        let own_prefix = format!("{}-", spec.instance);
        expected.extend(extra.iter().filter_map(|n| {
            let ip = planned_ip(&spec.subnet, n.strip_prefix(&own_prefix)?)?;
            veth_name(&spec.subnet, ip)
        }));
        let veth_prefix = format!("{VETH_PREFIX}{:08x}", u32::from(spec.subnet.network()));
        let mut stray: Vec<String> = host
            .into_iter()
            .flat_map(|h| h.keys())
            .filter(|k| k.starts_with(&veth_prefix) && !expected.contains(k))
            .cloned()
            .collect();
        stray.sort();
        (extra, stray)
    }

    /// The lab host's interfaces; `shared` allows a view another read of this process took
    /// less than [`HOST_VIEW_TTL`] ago.
    async fn host_view(&self, shared: bool) -> Result<Option<NsView>, BackendError> {
        let mut views = host_views().lock().await;
        if shared {
            if let Some((at, view)) = views.get(&self.host_ns) {
                if at.elapsed() < HOST_VIEW_TTL {
                    return Ok(view.clone());
                }
            }
        }
        let view = Self::ns_view(&self.host_ns).await?;
        if shared {
            views.insert(self.host_ns.clone(), (std::time::Instant::now(), view.clone()));
        } else {
            // A private read (converge's read-back) is not shared: whatever happens to the lab
            // host after it must be seen by the next `observe`.
            views.remove(&self.host_ns);
        }
        Ok(view)
    }

    /// Drop the shared view of this lab host (it is about to change).
    async fn forget_host_view(&self) {
        host_views().lock().await.remove(&self.host_ns);
    }

    async fn observe_all(
        &self,
        spec: &LabSpec,
    ) -> Result<(LabStatus, Option<NsView>, Vec<NodeFinding>), BackendError> {
        self.observe_with(spec, false).await
    }

    async fn observe_with(
        &self,
        spec: &LabSpec,
        shared: bool,
    ) -> Result<(LabStatus, Option<NsView>, Vec<NodeFinding>), BackendError> {
        let host = self.host_view(shared).await?;
        let mut problems = self.bridge_problems(spec, host.as_ref());
        let plan = Self::pod_plan(spec)?;
        let mut findings = Vec::new();
        for (node, np) in spec.nodes.iter().zip(&plan) {
            findings.push(self.observe_node(spec, node, host.as_ref(), Some(np)).await?);
        }
        let (extra, stray) = self.strays(spec, host.as_ref());
        for v in &stray {
            problems.push(format!(
                "veth {v} in netns {} belongs to no node",
                self.host_ns
            ));
        }
        let bridge_exists = host
            .as_ref()
            .is_some_and(|h| h.contains_key(&bridge_name(&spec.subnet)));
        let any_node = findings.iter().any(|f| f.exists) || !extra.is_empty();
        let nodes = spec
            .nodes
            .iter()
            .zip(&findings)
            .map(|(n, f)| NodeStatus {
                name: n.name.clone(),
                state: if !f.exists {
                    "missing".into()
                } else if f.problems.is_empty() {
                    "running".into()
                } else {
                    format!("broken: {}", f.problems.join("; "))
                },
                healthy: f.exists && f.problems.is_empty(),
            })
            .collect();
        let status = LabStatus {
            exists: bridge_exists || any_node,
            nodes,
            extra_nodes: extra,
            problems,
        };
        Ok((status, host, findings))
    }

    /// Lab-host-level work, under the lab host lock: create the lab host if missing, keep its
    /// sysctls and nftables base table in place, and create or repair this instance's bridge.
    /// The bridge is made under the same lock so that a concurrent teardown of the last other
    /// instance cannot delete the lab host between "it exists" and "my bridge is in it".
    async fn ensure_host_and_bridge(
        &self,
        spec: &LabSpec,
        op: &Op<'_>,
    ) -> Result<NsView, BackendError> {
        let host = &self.host_ns;
        let lock_path = format!("netns-{host}");
        let _lock = HostLock::acquire(&lock_path, op.remaining())
            .await
            .map_err(|source| BackendError::Io {
                path: format!("lock {lock_path}"),
                source,
            })?;
        op.check("lock the lab host")?;
        let mut sysctls = vec![
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ];
        if !netns_exists(host) {
            tracing::info!(netns = %host, "creating lab host network namespace");
            match op.run(&Cmd::new(["ip", "netns", "add", host])).await {
                Ok(_) => {}
                // Someone else made it in the meantime (another lab host lock holder cannot
                // exist, but a user may have run `ip netns add` by hand): fine.
                Err(BackendError::Command(e)) if e.stderr().contains("File exists") => {}
                Err(e) => return Err(e),
            }
            // Forwarding starts (and stays, until a federation) off.
            sysctls.insert(0, "net.ipv4.ip_forward=0");
        }
        // Bridged traffic between the nodes of one instance must not traverse the L3 forward
        // hook (br_netfilter would send it there, into the policy-drop chain): `-e` because the
        // keys exist only when br_netfilter is loaded.
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            host.as_str(),
            "sysctl",
            "-q",
            "-e",
            "-w",
        ];
        argv.extend(sysctls.iter().copied());
        op.run(&Cmd::new(argv)).await?;
        op.check("nftables base table")?;
        self.nft.ensure_base().await.map_err(hostnet_err)?;

        let view = Self::ns_view(host).await?.ok_or_else(|| {
            BackendError::Other(format!(
                "lab host network namespace {host} vanished while it was locked"
            ))
        })?;
        let br = bridge_name(&spec.subnet);
        let gw = format!("{}/{}", spec.gateway, spec.subnet.prefix_len());
        let mut lines = Vec::new();
        if view.get("lo").is_none_or(|lo| !lo.up) {
            lines.push("link set lo up".to_string());
        }
        match view.get(&br) {
            None => {
                tracing::info!(netns = %host, bridge = %br, gateway = %gw, instance = %spec.instance, "creating bridge");
                lines.push(format!("link add {br} address {} type bridge", bridge_mac(&spec.subnet)));
                lines.push(format!("addr add {gw} dev {br}"));
                lines.push(format!("link set {br} up"));
            }
            Some(i) if i.kind.as_deref() != Some("bridge") => {
                return Err(BackendError::Other(format!(
                    "interface {br} in netns {host} is a {}, not the bridge of instance {}: remove it (`ip -n {host} link del {br}`) and apply again",
                    i.kind.as_deref().unwrap_or("plain interface"),
                    spec.instance
                )));
            }
            Some(i) => {
                let mac = bridge_mac(&spec.subnet);
                if i.mac.as_deref() != Some(mac.as_str()) {
                    tracing::info!(bridge = %br, mac = %mac, "fixing the bridge's link-layer address");
                    lines.push(format!("link set {br} address {mac}"));
                }
                if !i.has_addr(spec.gateway, spec.subnet.prefix_len()) {
                    tracing::info!(bridge = %br, gateway = %gw, "repairing gateway address");
                    lines.push(format!("addr replace {gw} dev {br}"));
                }
                if !i.up {
                    tracing::info!(bridge = %br, "bringing bridge up");
                    lines.push(format!("link set {br} up"));
                }
            }
        }
        run_batch(Some(host), &lines, Some(op)).await?;
        Ok(view)
    }

    /// Delete lab-host interfaces, tolerating ones that vanished meanwhile (a node namespace
    /// deleted out of band takes its veth with it, asynchronously).
    async fn delete_links(&self, names: &[String], op: &Op<'_>) -> Result<(), BackendError> {
        if names.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = names.iter().map(|n| format!("link del {n}")).collect();
        if run_batch(Some(&self.host_ns), &lines, Some(op))
            .await
            .is_ok()
        {
            return Ok(());
        }
        // One by one, so that one already gone does not hide a real failure.
        for n in names {
            let cmd = Cmd::new(["ip", "-n", self.host_ns.as_str(), "link", "del", n.as_str()]);
            match op.run(&cmd).await {
                Ok(_) => {}
                Err(BackendError::Command(e)) if e.stderr().contains("Cannot find device") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Delete node namespaces (by node name), tolerating ones already gone.
    async fn delete_node_namespaces(
        &self,
        nodes: &[String],
        op: &Op<'_>,
    ) -> Result<(), BackendError> {
        let doomed: Vec<String> = nodes
            .iter()
            .flat_map(|n| {
                let mut v = pods::pod_namespaces_of(&self.host_ns, n);
                v.push(self.node_netns(n));
                v
            })
            .filter(|ns| netns_exists(ns))
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        tracing::info!(namespaces = ?doomed, "deleting node network namespaces");
        let lines: Vec<String> = doomed.iter().map(|ns| format!("netns del {ns}")).collect();
        if run_batch(None, &lines, Some(op)).await.is_ok() {
            return Ok(());
        }
        // One by one, so that one deleted meanwhile does not hide a real failure.
        for ns in &doomed {
            match op.run(&Cmd::new(["ip", "netns", "del", ns.as_str()])).await {
                Ok(_) => {}
                Err(_) if !netns_exists(ns) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for NetnsBackend {
    fn name(&self) -> &'static str {
        "netns"
    }

    async fn preflight(&self) -> Result<(), BackendError> {
        let cap = crate::hostnet::host::effective_capabilities().unwrap_or(0);
        check_prerequisites(
            cap,
            find_program("ip").is_some(),
            find_program("nft").is_some(),
        )
    }

    async fn converge(&self, spec: &LabSpec, ctl: &OpControl) -> Result<LabStatus, BackendError> {
        Self::validate(spec)?;
        self.forget_host_view().await;
        let op = Op::new(ctl);
        let br = bridge_name(&spec.subnet);
        let prefix = spec.subnet.prefix_len();

        let host_view = self.ensure_host_and_bridge(spec, &op).await?;
        op.check("look at the nodes")?;

        // Nodes the spec no longer lists (scale-down), and veths of this subnet left without
        // a node: removed, lab-host end first so the interfaces are gone when this returns.
        let (extra, stray) = self.strays(spec, Some(&host_view));
        let own_prefix = format!("{}-", spec.instance);
        let mut doomed_links = stray;
        for n in &extra {
            if let Some(v) = n
                .strip_prefix(&own_prefix)
                .and_then(|rest| planned_ip(&spec.subnet, rest))
                .and_then(|ip| veth_name(&spec.subnet, ip))
            {
                if host_view.contains_key(&v) {
                    doomed_links.push(v);
                }
            }
        }
        if !extra.is_empty() {
            tracing::info!(instance = %spec.instance, nodes = ?extra, "removing nodes no longer in the spec");
        }
        self.delete_links(&doomed_links, &op).await?;
        self.delete_node_namespaces(&extra, &op).await?;

        // Spec nodes: find the missing and the broken; healthy ones are not touched at all.
        // Pods are converged after the nodes (below), so nodes are judged on their own here.
        let mut findings = Vec::new();
        for node in &spec.nodes {
            op.check(&format!("look at node {}", node.name))?;
            findings.push(self.observe_node(spec, node, Some(&host_view), None).await?);
        }
        let mut new_namespaces = Vec::new();
        let mut stale_links = Vec::new();
        let mut host_lines = Vec::new();
        // Node-side clean-up (`link del eth0` of a half pair) must run before the lab host
        // creates the new pair, whose node end has the same name.
        let mut node_cleanup: Vec<(String, Vec<String>)> = Vec::new();
        let mut node_jobs: Vec<(String, Vec<String>)> = Vec::new();
        for (node, f) in spec.nodes.iter().zip(&findings) {
            if f.exists && f.problems.is_empty() {
                continue;
            }
            let addr = format!("{}/{prefix}", node.ip);
            let eth = f.view.get(NODE_IFACE);
            let host_end = host_view.get(&f.veth);
            let mut lines = Vec::new();
            if !f.exists {
                tracing::info!(node = %node.name, netns = %f.netns, ip = %addr, "creating node");
                new_namespaces.push(format!("netns add {}", f.netns));
            } else {
                tracing::info!(node = %node.name, problems = %f.problems.join("; "), "repairing node");
            }
            if eth.is_some() && host_end.is_some() {
                // The pair is there: put its settings right without re-creating it.
                host_lines.push(format!("link set {} master {br} up", f.veth));
                let wrong = eth.is_some_and(|e| e.addrs.iter().any(|a| *a != (node.ip, prefix)));
                if wrong {
                    lines.push(format!("addr flush dev {NODE_IFACE}"));
                }
                lines.push(format!("addr replace {addr} dev {NODE_IFACE}"));
            } else {
                // Half a pair is no use: drop what is left of it and make a new one.
                if host_end.is_some() {
                    stale_links.push(f.veth.clone());
                }
                if eth.is_some() {
                    node_cleanup.push((f.netns.clone(), vec![format!("link del {NODE_IFACE}")]));
                }
                host_lines.push(format!(
                    "link add {} up master {br} type veth peer name {NODE_IFACE} netns {}",
                    f.veth, f.netns
                ));
                lines.push(format!("addr add {addr} dev {NODE_IFACE}"));
            }
            lines.push(format!("link set {NODE_IFACE} up"));
            lines.push("link set lo up".to_string());
            node_jobs.push((f.netns.clone(), lines));
        }
        run_batch(None, &new_namespaces, Some(&op)).await?;
        self.delete_links(&stale_links, &op).await?;
        for (ns, lines) in &node_cleanup {
            run_batch(Some(ns), lines, Some(&op)).await?;
        }
        run_batch(Some(&self.host_ns), &host_lines, Some(&op)).await?;
        for (ns, lines) in &node_jobs {
            run_batch(Some(ns), lines, Some(&op)).await?;
        }
        pods::converge(&self.host_ns, spec, &Self::pod_plan(spec)?, &op).await?;
        op.check("read back the lab")?;
        Ok(self.observe_all(spec).await?.0)
    }

    async fn observe(&self, spec: &LabSpec) -> Result<LabStatus, BackendError> {
        Ok(self.observe_with(spec, true).await?.0)
    }

    async fn teardown(&self, spec: &LabSpec, ctl: &OpControl) -> Result<(), BackendError> {
        self.forget_host_view().await;
        let op = Op::new(ctl);
        let host = self.host_ns.clone();
        let br = bridge_name(&spec.subnet);
        let veth_prefix = format!("{VETH_PREFIX}{:08x}", u32::from(spec.subnet.network()));
        if let Some(view) = Self::ns_view(&host).await? {
            // Lab-host ends first: deleting one end of a veth removes both at once, whereas a
            // deleted namespace takes its interfaces down later, in the background.
            let mut links: Vec<String> = view
                .keys()
                .filter(|k| k.starts_with(&veth_prefix))
                .cloned()
                .collect();
            links.sort();
            if view.contains_key(&br) {
                links.push(br.clone());
            }
            if !links.is_empty() {
                tracing::info!(netns = %host, instance = %spec.instance, links = ?links, "deleting bridge and veths");
            }
            self.delete_links(&links, &op).await?;
        }
        let mut nodes = self.existing_nodes(&spec.instance);
        for n in &spec.nodes {
            if !nodes.contains(&n.name) {
                nodes.push(n.name.clone());
            }
        }
        self.delete_node_namespaces(&nodes, &op).await?;

        // The lab host goes with its last bridge, decided under the lock so that a concurrent
        // converge of another instance is either seen (its bridge exists) or waits for us.
        op.check("remove the lab host if empty")?;
        let lock_path = format!("netns-{host}");
        let _lock = HostLock::acquire(&lock_path, op.remaining())
            .await
            .map_err(|source| BackendError::Io {
                path: format!("lock {lock_path}"),
                source,
            })?;
        if let Some(view) = Self::ns_view(&host).await? {
            if !view.keys().any(|k| k.starts_with(BRIDGE_PREFIX)) {
                tracing::info!(netns = %host, "no instance left: deleting lab host network namespace");
                match op
                    .run(&Cmd::new(["ip", "netns", "del", host.as_str()]))
                    .await
                {
                    Ok(_) => {}
                    Err(_) if !netns_exists(&host) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn host_interface(&self, spec: &LabSpec) -> Result<String, BackendError> {
        let br = bridge_name(&spec.subnet);
        match Self::ns_view(&self.host_ns).await? {
            Some(view) if view.contains_key(&br) => Ok(br),
            Some(_) => Err(BackendError::Other(format!(
                "instance {} has no bridge {br} in lab host netns {}",
                spec.instance, self.host_ns
            ))),
            None => Err(BackendError::Other(format!(
                "lab host network namespace {} does not exist (instance {} has no bridge {br})",
                self.host_ns, spec.instance
            ))),
        }
    }

    fn forwarding(&self) -> Arc<dyn Forwarding> {
        self.nft.clone()
    }

    fn guest_route_holders(&self, spec: &LabSpec) -> Vec<(String, Ipv4Addr)> {
        let plan = Self::pod_plan(spec).unwrap_or_default();
        let mut out = Vec::new();
        for (i, node) in spec.nodes.iter().enumerate() {
            out.push((node.name.clone(), spec.gateway));
            if let Some(np) = plan.get(i) {
                for k in 1..=np.pods.len() {
                    out.push((pods_plan::pod_name(&node.name, k), np.gateway));
                }
            }
        }
        out
    }

    async fn guest_routes(&self, spec: &LabSpec) -> Result<Vec<(String, Ipv4Net)>, BackendError> {
        let mut out = Vec::new();
        for (holder, _) in self.guest_route_holders(spec) {
            // Pods are named like nodes: `<host>-<pod name>`.
            let ns = self.node_netns(&holder);
            if !netns_exists(&ns) {
                continue;
            }
            let routes = match pods::read_routes(&ns).await {
                Ok(r) => r,
                Err(_) if !netns_exists(&ns) => continue,
                Err(e) => return Err(e),
            };
            for r in routes {
                // Its own instance (the subnet, however reached; the pod slices and pods) is
                // not another network.
                if r.dst == spec.subnet || spec.pod_cidr.contains(&r.dst) {
                    continue;
                }
                out.push((holder.clone(), r.dst));
            }
        }
        Ok(out)
    }

    async fn set_guest_route(
        &self,
        spec: &LabSpec,
        dest: Ipv4Net,
        present: bool,
        ctl: &OpControl,
    ) -> Result<(), BackendError> {
        let op = Op::new(ctl);
        let dest_text = dest.to_string();
        for (name, via) in self.guest_route_holders(spec) {
            let ns = self.node_netns(&name);
            let gw = via.to_string();
            if present {
                if !netns_exists(&ns) {
                    return Err(BackendError::Other(format!(
                        "{name} has no network namespace {ns}: converge the instance first"
                    )));
                }
                let cmd = Cmd::new([
                    "ip", "-n", &ns, "route", "replace", &dest_text, "via", &gw, "dev", NODE_IFACE,
                ]);
                op.run(&cmd).await?;
                tracing::info!(node = %name, dest = %dest, via = %gw, "guest route in place");
            } else {
                if !netns_exists(&ns) {
                    continue;
                }
                let cmd = Cmd::new(["ip", "-n", &ns, "route", "del", &dest_text, "via", &gw]);
                match op.run(&cmd).await {
                    Ok(_) => tracing::info!(node = %name, dest = %dest, "guest route removed"),
                    // ESRCH: no such route, which is what we want.
                    Err(BackendError::Command(e)) if e.stderr().contains("No such process") => {}
                    Err(_) if !netns_exists(&ns) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn probe_sources(&self, spec: &LabSpec) -> Vec<(String, Ipv4Addr)> {
        let plan = Self::pod_plan(spec).unwrap_or_default();
        let mut out = Vec::new();
        for (i, node) in spec.nodes.iter().enumerate() {
            out.push((node.name.clone(), node.ip));
            if let Some(np) = plan.get(i) {
                for (k, ip) in np.pods.iter().enumerate() {
                    out.push((pods_plan::pod_name(&node.name, k + 1), *ip));
                }
            }
        }
        out
    }

    async fn probe(&self, _spec: &LabSpec, from: &str, targets: &[Ipv4Addr], timeout: std::time::Duration) -> Result<Vec<ProbeOutcome>, BackendError> {
        // Nodes and pods are both `<host>-<name>`.
        let ns = self.node_netns(from);
        let list = targets.to_vec();
        let what = ns.clone();
        let found = tokio::task::spawn_blocking(move || probe::probe_from(&what, &list, timeout))
            .await
            .map_err(|e| BackendError::Other(format!("probe from {ns} failed: {e}")))?
            .map_err(|source| BackendError::Io { path: format!("ICMP probe from network namespace {ns}"), source })?;
        Ok(found.unwrap_or_else(|| vec![ProbeOutcome::Failed(format!("network namespace {ns} does not exist")); targets.len()]))
    }

    fn pod_routes(&self, spec: &LabSpec) -> Vec<PodRoute> {
        Self::pod_plan(spec)
            .unwrap_or_default()
            .into_iter()
            .map(|np| PodRoute { slice: np.slice, via: np.node_ip, node: np.node })
            .collect()
    }

    fn describe_host_pod_routes(&self, spec: &LabSpec) -> Vec<String> {
        let br = bridge_name(&spec.subnet);
        self.pod_routes(spec)
            .iter()
            .map(|r| format!("netns {}: route {} via {} dev {br} (pods of {})", self.host_ns, r.slice, r.via, r.node))
            .collect()
    }

    async fn missing_host_pod_routes(&self, spec: &LabSpec) -> Result<Vec<String>, BackendError> {
        let wanted = self.pod_routes(spec);
        let lines = self.describe_host_pod_routes(spec);
        if !netns_exists(&self.host_ns) {
            return Ok(lines);
        }
        let br = bridge_name(&spec.subnet);
        let have = pods::read_routes(&self.host_ns).await?;
        Ok(wanted
            .iter()
            .zip(lines)
            .filter(|(w, _)| !have.iter().any(|h| h.dst == w.slice && h.via == Some(w.via) && h.dev.as_deref() == Some(br.as_str())))
            .map(|(_, l)| l)
            .collect())
    }

    async fn set_host_pod_routes(&self, spec: &LabSpec, present: bool, ctl: &OpControl) -> Result<Vec<String>, BackendError> {
        let op = Op::new(ctl);
        if !netns_exists(&self.host_ns) {
            if present {
                return Err(BackendError::Other(format!(
                    "lab host network namespace {} does not exist: converge instance {} first",
                    self.host_ns, spec.instance
                )));
            }
            return Ok(Vec::new());
        }
        let br = bridge_name(&spec.subnet);
        let have = pods::read_routes(&self.host_ns).await?;
        let wanted = self.pod_routes(spec);
        let mut lines = Vec::new();
        if present {
            // Slices of nodes this instance no longer has (a scale-down while federated) go.
            for h in &have {
                let ours = spec.pod_cidr.contains(&h.dst) && h.dev.as_deref() == Some(br.as_str());
                if ours && !wanted.iter().any(|w| w.slice == h.dst) {
                    tracing::info!(netns = %self.host_ns, slice = %h.dst, "lab host stops routing a slice no node owns");
                    lines.push(format!("route del {} dev {br}", h.dst));
                }
            }
        }
        for r in wanted {
            let there = have.iter().find(|h| h.dst == r.slice);
            if present {
                let right = there.is_some_and(|h| h.via == Some(r.via) && h.dev.as_deref() == Some(br.as_str()));
                if !right {
                    tracing::info!(netns = %self.host_ns, slice = %r.slice, via = %r.via, "lab host routes pods of {}", r.node);
                    lines.push(format!("route replace {} via {} dev {br}", r.slice, r.via));
                }
            } else if there.is_some_and(|h| h.dev.as_deref() == Some(br.as_str())) {
                tracing::info!(netns = %self.host_ns, slice = %r.slice, "lab host stops routing pods of {}", r.node);
                lines.push(format!("route del {} dev {br}", r.slice));
            }
        }
        run_batch(Some(&self.host_ns), &lines, Some(&op)).await?;
        Ok(if present { self.describe_host_pod_routes(spec) } else { Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::plan_nodes;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn names_follow_the_documented_examples() {
        assert_eq!(bridge_name(&n("192.168.56.0/24")), "hlbc0a83800");
        assert_eq!(
            veth_name(&n("192.168.56.0/24"), "192.168.56.10".parse().unwrap()).as_deref(),
            Some("hlvc0a838000a")
        );
        assert_eq!(node_netns("homelab", "acme-cp-1"), "homelab-acme-cp-1");
    }

    #[test]
    fn bridge_macs_are_locally_administered_and_distinct_per_subnet() {
        assert_eq!(bridge_mac(&n("192.168.56.0/24")), "02:68:c0:a8:38:00");
        assert_ne!(bridge_mac(&n("192.168.56.0/24")), bridge_mac(&n("192.168.57.0/24")));
    }

    #[test]
    fn names_fit_in_fifteen_characters_even_for_the_largest_values() {
        let subnet = n("255.255.255.0/24");
        assert!(bridge_name(&subnet).len() <= 15);
        assert!(
            veth_name(&subnet, "255.255.255.254".parse().unwrap())
                .unwrap()
                .len()
                <= 15
        );
    }

    #[test]
    fn names_are_distinct_for_disjoint_subnets_and_all_their_nodes() {
        // Every /24 of a /21 pool and every /26 of a /24, all with the most nodes allowed.
        let mut subnets: Vec<Ipv4Net> = n("192.168.56.0/21").subnets(24).unwrap().collect();
        subnets.extend(n("10.20.30.0/24").subnets(26).unwrap());
        let mut seen = std::collections::HashSet::new();
        for s in &subnets {
            assert!(seen.insert(bridge_name(s)), "bridge name of {s} repeats");
            for node in plan_nodes("x", s, 3, 10).unwrap() {
                let v = veth_name(s, node.ip).unwrap();
                assert!(v.len() <= 15);
                assert!(seen.insert(v.clone()), "veth {v} of {s} repeats");
            }
        }
    }

    #[test]
    fn veth_name_refuses_addresses_outside_or_far_into_the_subnet() {
        assert_eq!(
            veth_name(&n("192.168.56.0/24"), "192.168.57.10".parse().unwrap()),
            None
        );
        assert_eq!(
            veth_name(&n("10.0.0.0/16"), "10.0.1.0".parse().unwrap()),
            None
        );
    }

    #[test]
    fn node_suffix_matches_exactly_cp_n_and_worker_n() {
        for ok in ["cp-1", "worker-10", "cp-3"] {
            assert!(is_node_suffix(ok), "{ok}");
        }
        // `acme-worker-cp-1` is node cp-1 of instance `acme-worker`, never a node of `acme`.
        for bad in [
            "worker-cp-1",
            "cp-",
            "cp-1a",
            "worker",
            "db-1",
            "cp-1-x",
            "",
        ] {
            assert!(!is_node_suffix(bad), "{bad}");
        }
    }

    #[test]
    fn planned_ip_follows_the_naming_plan() {
        let s = n("192.168.56.0/24");
        assert_eq!(
            planned_ip(&s, "cp-2"),
            Some("192.168.56.11".parse().unwrap())
        );
        assert_eq!(
            planned_ip(&s, "worker-1"),
            Some("192.168.56.20".parse().unwrap())
        );
        assert_eq!(planned_ip(&s, "worker-0"), None);
    }

    #[test]
    fn missing_capability_says_how_to_run_and_missing_tools_name_the_package() {
        let err = check_prerequisites(0, true, true).unwrap_err();
        let BackendError::Unavailable { what, fix } = &err else {
            panic!("{err:?}")
        };
        assert!(what.contains("CAP_NET_ADMIN"), "{what}");
        assert!(
            fix.contains("sudo -E terraform apply") && fix.contains("setcap"),
            "{fix}"
        );
        let cap = 1u64 << 12;
        let BackendError::Unavailable { fix, .. } =
            check_prerequisites(cap, false, true).unwrap_err()
        else {
            panic!()
        };
        assert!(fix.contains("iproute2"), "{fix}");
        let BackendError::Unavailable { fix, .. } =
            check_prerequisites(cap, true, false).unwrap_err()
        else {
            panic!()
        };
        assert!(fix.contains("nftables"), "{fix}");
        assert!(check_prerequisites(cap, true, true).is_ok());
    }

    #[test]
    fn link_listing_is_parsed() {
        let text = r#"[{"ifname":"lo","flags":["LOOPBACK","UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"hlbc0a83800","flags":["BROADCAST","UP"],"linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"192.168.56.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
            {"ifname":"hlvc0a838000a","flags":["BROADCAST"],"master":"hlbc0a83800","linkinfo":{"info_kind":"veth"},"addr_info":[]}]"#;
        let view = parse_links(text).unwrap();
        let br = &view["hlbc0a83800"];
        assert!(br.up);
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(br.addrs, vec![("192.168.56.1".parse().unwrap(), 24)]);
        let v = &view["hlvc0a838000a"];
        assert!(!v.up);
        assert_eq!(v.master.as_deref(), Some("hlbc0a83800"));
    }
}
