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
//! Rooms: here the lifecycle (converge, teardown, guest routes, federation's host routes);
//! `naming` (every name), `view` (reading namespaces, in-process or through `ip -j`, and the
//! shared lab-host view), `observe` (reading a lab back), `ops` (batches, deadlines, stop),
//! `host` (the backend value, what the host must offer), `pods` and `probe`.
//!
//! Concurrency: several provider processes may converge different instances of one lab host at
//! once. What they share (the lab host namespace itself, its sysctls and nftables base table,
//! and the decision to delete the lab host when its last bridge goes) is changed under a
//! [`HostLock`] per lab host; per-instance work (its bridge's ports, its node namespaces) is
//! disjoint between instances and needs no lock.

use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;

use super::pods::{self as pods_plan, NodePods};
use super::{
    Backend, BackendError, LabSpec, LabStatus, OpControl, PodRoute, ProbeOutcome,
};
use crate::hostnet::host::{find_program, HostLock};
use crate::hostnet::{Forwarding, HostNetError};
use crate::net::Ipv4Net;
use crate::process::Cmd;

mod host;
mod naming;
mod observe;
mod ops;
mod pods;
mod probe;
mod view;

pub use host::{check_prerequisites, NetnsBackend};
pub use naming::{bridge_mac, bridge_name, node_netns, veth_name, BRIDGE_PREFIX, NODE_IFACE, VETH_PREFIX};
pub use pods::{pod_netns, POD_IFACE_PREFIX};

use naming::{is_node_suffix, planned_ip, NETNS_DIR};
use ops::{run_batch, Op};
use view::{netns_exists, NsView};

fn hostnet_err(e: HostNetError) -> BackendError {
    match e {
        HostNetError::Command(c) => BackendError::Command(c),
        other => BackendError::HostNet(other),
    }
}

impl NetnsBackend {
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

}
