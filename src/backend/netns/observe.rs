//! Reading an instance's lab back: the lab host's view (shared by one refresh), each node's
//! and pod's namespace, what is wrong with the bridge, the nodes and the pods, and what the
//! lab host holds that the plan no longer names.

use crate::backend::pods::NodePods;
use crate::backend::{BackendError, LabSpec, LabStatus, NodeSpec, NodeStatus};
use crate::process::{self, Cmd};

use super::host::NetnsBackend;
use super::naming::{bridge_name, planned_ip, veth_name, NODE_IFACE, VETH_PREFIX};
use super::pods;
use super::view::{host_views, netns_exists, node_view_in_process, parse_links, NsView, HOST_VIEW_TTL};

/// What observing one node found.
pub(super) struct NodeFinding {
    pub(super) netns: String,
    pub(super) veth: String,
    /// The namespace exists.
    pub(super) exists: bool,
    /// Its interfaces (empty when it does not exist).
    pub(super) view: NsView,
    /// What is wrong (empty: healthy).
    pub(super) problems: Vec<String>,
}

impl NetnsBackend {
    /// Interfaces of a namespace; `None` when the namespace does not exist (or vanished).
    pub(super) async fn ns_view(ns: &str) -> Result<Option<NsView>, BackendError> {
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
    pub(super) async fn node_view(ns: &str) -> Result<Option<NsView>, BackendError> {
        let name = ns.to_string();
        match tokio::task::spawn_blocking(move || node_view_in_process(&name)).await {
            Ok(Ok(view)) => Ok(view),
            _ => Self::ns_view(ns).await,
        }
    }

    pub(super) fn bridge_problems(&self, spec: &LabSpec, host: Option<&NsView>) -> Vec<String> {
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

    pub(super) async fn observe_node(
        &self,
        spec: &LabSpec,
        node: &NodeSpec,
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
    pub(super) fn strays(&self, spec: &LabSpec, host: Option<&NsView>) -> (Vec<String>, Vec<String>) {
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
    pub(super) async fn host_view(&self, shared: bool) -> Result<Option<NsView>, BackendError> {
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
    pub(super) async fn forget_host_view(&self) {
        host_views().lock().await.remove(&self.host_ns);
    }

    pub(super) async fn observe_all(
        &self,
        spec: &LabSpec,
    ) -> Result<(LabStatus, Option<NsView>, Vec<NodeFinding>), BackendError> {
        self.observe_with(spec, false).await
    }

    pub(super) async fn observe_with(
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
}
