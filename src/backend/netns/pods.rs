//! Pods of the `netns` lab: each node carries `pods_per_node` pod namespaces
//! (`<host_ns>-<node>-pod-<k>`), each wired to its node by a veth (`pod<k>` in the node, `eth0` in
//! the pod) and addressed from the node's slice of the instance's pod CIDR
//! ([`crate::backend::pods`]). The node forwards for its own pods (`net.ipv4.ip_forward=1` inside
//! the node's namespace only) and routes the other nodes' slices via their addresses on the
//! instance subnet, the way a CNI in native-routing mode does.
//!
//! A pod routes exactly its own instance: its subnet and its pod CIDR, via its node (like a
//! CNI that has no route to another cluster's pods); everything else is "Network is
//! unreachable" inside the pod. Nothing outside the instance gets a route to its pod CIDR: not
//! the lab host, not another instance (a federation adds such routes, see `federation`).
//!
//! Both ends of every pod veth are born inside namespaces (`ip -n <node> link add pod1 … peer
//! name eth0 netns <pod>`); nothing is created in the root namespace.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::host::NetnsBackend;
use super::naming::{node_netns, NETNS_DIR, NODE_IFACE};
use super::ops::{run_batch, Op};
use super::view::{netns_exists, sysctl_in_process, NsView};
use crate::backend::pods::{pod_name, NodePods};
use crate::backend::{BackendError, LabSpec};
use crate::hostnet::{ip, HostNetError};
use crate::net::Ipv4Net;
use crate::process::{self, Cmd};

/// Prefix of the node end of a pod's veth (`pod1`, `pod2`, …).
pub const POD_IFACE_PREFIX: &str = "pod";

/// The namespace of pod `k` (from 1) of `node`: `<host_ns>-<node>-pod-<k>`.
pub fn pod_netns(host_ns: &str, node: &str, k: usize) -> String {
    node_netns(host_ns, &pod_name(node, k))
}

fn pod_iface(k: usize) -> String {
    format!("{POD_IFACE_PREFIX}{k}")
}

/// Pod numbers of `node` whose namespaces exist, sorted.
pub(super) fn existing_pods(host_ns: &str, node: &str) -> Vec<usize> {
    let prefix = format!("{}-pod-", node_netns(host_ns, node));
    let mut found: Vec<usize> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let k = name.strip_prefix(&prefix)?;
            (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())).then(|| k.parse().ok())?
        })
        .collect();
    found.sort();
    found
}

/// What is wrong with pod `k` of a node (empty: healthy).
async fn pod_problems(host_ns: &str, np: &NodePods, k: usize, node_view: &NsView) -> Result<Vec<String>, BackendError> {
    let name = pod_name(&np.node, k);
    let ns = pod_netns(host_ns, &np.node, k);
    let ip = np.pods[k - 1];
    let mut problems = Vec::new();
    let Some(view) = NetnsBackend::node_view(&ns).await? else {
        return Ok(vec![format!("pod {name} is missing")]);
    };
    let iface = pod_iface(k);
    match node_view.get(&iface) {
        None => problems.push(format!("pod {name}: {iface} is missing")),
        Some(i) if !i.up || !i.has_addr(np.gateway, 32) => {
            problems.push(format!("pod {name}: {iface} is not up with {}/32", np.gateway))
        }
        Some(_) => {}
    }
    match view.get(NODE_IFACE) {
        Some(e) if e.up && e.addrs == vec![(ip, 32)] => {}
        _ => problems.push(format!("pod {name}: {NODE_IFACE} is not up with exactly {ip}/32")),
    }
    if view.get("lo").is_some_and(|lo| !lo.up) {
        problems.push(format!("pod {name}: lo is down"));
    }
    Ok(problems)
}

/// What is wrong with the pods and pod forwarding of one node (empty: healthy). `node_view` is
/// the node's interfaces.
pub(super) async fn node_problems(host_ns: &str, np: &NodePods, node_view: &NsView) -> Result<Vec<String>, BackendError> {
    let mut problems = Vec::new();
    let node_ns = node_netns(host_ns, &np.node);
    let ns = node_ns.clone();
    let forwarding = tokio::task::spawn_blocking(move || sysctl_in_process(&ns, "net/ipv4/ip_forward")).await;
    match forwarding {
        Ok(Ok(Some(v))) if v != "1" => problems.push("IPv4 forwarding is off (its pods are cut off)".to_string()),
        _ => {}
    }
    for k in 1..=np.pods.len() {
        problems.extend(pod_problems(host_ns, np, k, node_view).await?);
    }
    for k in existing_pods(host_ns, &np.node) {
        if k > np.pods.len() {
            problems.push(format!("pod {} is not in the configuration", pod_name(&np.node, k)));
        }
    }
    Ok(problems)
}

/// Namespaces of every pod of `node` that exist (for teardown and scale-down).
pub(super) fn pod_namespaces_of(host_ns: &str, node: &str) -> Vec<String> {
    existing_pods(host_ns, node).into_iter().map(|k| pod_netns(host_ns, node, k)).collect()
}

/// One IPv4 route as `ip -j route` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RouteView {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

/// The main table's IPv4 routes of a namespace.
pub(super) async fn read_routes(ns: &str) -> Result<Vec<RouteView>, BackendError> {
    let cmd = Cmd::new(["ip", "-n", ns, "-j", "-4", "route", "show", "table", "main"]);
    let text = process::run(&cmd).await?.stdout;
    parse_routes(&text).map_err(|why| BackendError::HostNet(HostNetError::Parse { cmd: cmd.to_string(), why }))
}

/// Parse `ip -j -4 route show` (through the typed reader, `hostnet::ip`).
pub(super) fn parse_routes(text: &str) -> Result<Vec<RouteView>, String> {
    Ok(ip::routes(text)?
        .into_iter()
        .map(|r| RouteView { dst: r.dst.unwrap_or_default(), via: r.gateway, dev: r.dev })
        .collect())
}

/// The routes of its own pod networking that node `np` must have: every other node's slice via
/// that node, and each of its pods through its veth.
fn node_routes(np: &NodePods, plan: &[NodePods]) -> Vec<RouteView> {
    let mut want: Vec<RouteView> = plan
        .iter()
        .filter(|o| o.node != np.node)
        .map(|o| RouteView { dst: o.slice, via: Some(o.node_ip), dev: Some(NODE_IFACE.into()) })
        .collect();
    for (i, ip) in np.pods.iter().enumerate() {
        want.push(RouteView { dst: Ipv4Net::from(*ip), via: None, dev: Some(pod_iface(i + 1)) });
    }
    want
}

/// `ip route` arguments of a route (`10.244.3.0/24 via 192.168.56.20 dev eth0`).
fn route_args(r: &RouteView) -> String {
    let mut s = r.dst.to_string();
    if let Some(v) = r.via {
        s.push_str(&format!(" via {v}"));
    }
    if let Some(d) = &r.dev {
        s.push_str(&format!(" dev {d}"));
    }
    s
}

/// Create, repair or remove the pods of every spec node, turn the node's forwarding on, and put
/// its pod routes right (routes of its own pod CIDR that the plan does not name are removed).
/// Healthy pods are left untouched. Runs after the nodes themselves are wired.
pub(super) async fn converge(host_ns: &str, spec: &LabSpec, plan: &[NodePods], op: &Op<'_>) -> Result<(), BackendError> {
    let mut doomed_ns = Vec::new();
    let mut new_ns = Vec::new();
    let mut node_pre: Vec<(String, Vec<String>)> = Vec::new();
    let mut node_post: Vec<(String, Vec<String>)> = Vec::new();
    let mut pod_jobs: Vec<(String, Vec<String>)> = Vec::new();
    let mut sysctl_nodes = Vec::new();
    for np in plan {
        op.check(&format!("look at the pods of {}", np.node))?;
        let node_ns = node_netns(host_ns, &np.node);
        let view = NetnsBackend::node_view(&node_ns).await?.unwrap_or_default();
        let mut pre = Vec::new();
        let mut post = Vec::new();
        for k in 1..=np.pods.len() {
            if pod_problems(host_ns, np, k, &view).await?.is_empty() {
                continue;
            }
            let ns = pod_netns(host_ns, &np.node, k);
            let iface = pod_iface(k);
            let ip = np.pods[k - 1];
            tracing::info!(pod = %pod_name(&np.node, k), netns = %ns, ip = %ip, "creating pod");
            // A pod is cheap: whatever is left of a broken one goes, and it is made anew. The
            // node end first: deleting it removes both ends at once.
            if view.contains_key(&iface) {
                pre.push(format!("link del {iface}"));
            }
            if netns_exists(&ns) {
                doomed_ns.push(ns.clone());
            }
            new_ns.push(ns.clone());
            post.push(format!("link add {iface} type veth peer name {NODE_IFACE} netns {ns}"));
            post.push(format!("addr add {}/32 dev {iface}", np.gateway));
            post.push(format!("link set {iface} up"));
            pod_jobs.push((
                ns,
                vec![
                    "link set lo up".to_string(),
                    format!("addr add {ip}/32 dev {NODE_IFACE}"),
                    format!("link set {NODE_IFACE} up"),
                    format!("route add {} dev {NODE_IFACE} scope link", np.gateway),
                    format!("route add {} via {} dev {NODE_IFACE}", spec.subnet, np.gateway),
                    format!("route add {} via {} dev {NODE_IFACE}", spec.pod_cidr, np.gateway),
                ],
            ));
        }
        for k in existing_pods(host_ns, &np.node) {
            if k > np.pods.len() {
                tracing::info!(pod = %pod_name(&np.node, k), "removing pod no longer in the spec");
                if view.contains_key(&pod_iface(k)) {
                    pre.push(format!("link del {}", pod_iface(k)));
                }
                doomed_ns.push(pod_netns(host_ns, &np.node, k));
            }
        }
        let ns = node_ns.clone();
        let fwd = tokio::task::spawn_blocking(move || sysctl_in_process(&ns, "net/ipv4/ip_forward")).await;
        if !matches!(fwd, Ok(Ok(Some(ref v))) if v == "1") {
            sysctl_nodes.push(node_ns.clone());
        }
        node_pre.push((node_ns.clone(), pre));
        node_post.push((node_ns, post));
    }
    for (ns, lines) in &node_pre {
        run_batch(Some(ns), lines, Some(op)).await?;
    }
    let del: Vec<String> = doomed_ns.iter().map(|ns| format!("netns del {ns}")).collect();
    run_batch(None, &del, Some(op)).await?;
    let add: Vec<String> = new_ns.iter().map(|ns| format!("netns add {ns}")).collect();
    run_batch(None, &add, Some(op)).await?;
    for (ns, lines) in &node_post {
        run_batch(Some(ns), lines, Some(op)).await?;
    }
    for (ns, lines) in &pod_jobs {
        run_batch(Some(ns), lines, Some(op)).await?;
    }
    for ns in &sysctl_nodes {
        tracing::info!(netns = %ns, "node forwards for its pods");
        op.run(&Cmd::new(["ip", "netns", "exec", ns.as_str(), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])).await?;
    }
    // Routes last: they need every node's eth0 and every pod's veth in place.
    for np in plan {
        let ns = node_netns(host_ns, &np.node);
        op.check(&format!("routes of {}", np.node))?;
        let have = read_routes(&ns).await?;
        let want = node_routes(np, plan);
        let have_set: BTreeSet<&RouteView> = have.iter().collect();
        let mut lines: Vec<String> = have
            .iter()
            .filter(|r| spec.pod_cidr.contains(&r.dst) && !want.contains(r))
            .map(|r| format!("route del {}", route_args(r)))
            .collect();
        lines.extend(want.iter().filter(|r| !have_set.contains(r)).map(|r| format!("route replace {}", route_args(r))));
        run_batch(Some(&ns), &lines, Some(op)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_listing_is_parsed_with_host_routes_as_slash_32() {
        let text = r#"[{"dst":"10.244.3.0/24","gateway":"192.168.56.20","dev":"eth0","flags":[]},{"dst":"10.244.0.2","dev":"pod1","scope":"link","prefsrc":"10.244.0.1","flags":[]},{"dst":"192.168.56.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.168.56.10","flags":[]}]"#;
        let r = parse_routes(text).unwrap();
        assert_eq!(r[0], RouteView { dst: "10.244.3.0/24".parse().unwrap(), via: Some("192.168.56.20".parse().unwrap()), dev: Some("eth0".into()) });
        assert_eq!(r[1].dst, "10.244.0.2/32".parse::<Ipv4Net>().unwrap());
        assert_eq!(r[1].via, None);
        assert_eq!(parse_routes("").unwrap(), vec![]);
        assert!(parse_routes(r#"[{"dst":"nonsense"}]"#).is_err());
    }

    #[test]
    fn a_node_routes_the_other_slices_via_their_nodes_and_its_pods_through_their_veths() {
        let subnet: Ipv4Net = "192.168.56.0/24".parse().unwrap();
        let nodes = crate::backend::plan_nodes("acme", &subnet, 1, 1).unwrap();
        let plan = crate::backend::pods::plan("acme", &"10.244.0.0/16".parse().unwrap(), &nodes, 2).unwrap();
        let got: Vec<String> = node_routes(&plan[0], &plan).iter().map(route_args).collect();
        assert_eq!(got, vec!["10.244.3.0/24 via 192.168.56.20 dev eth0", "10.244.0.2/32 dev pod1", "10.244.0.3/32 dev pod2"]);
    }
}
