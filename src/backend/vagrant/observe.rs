//! Reading an instance's lab back: each machine's state from `vagrant status`, the machines
//! Vagrant has records of (also those the configuration no longer names), and the lab's status
//! as the backend reports it.

use std::collections::BTreeSet;
use std::path::Path;

use crate::backend::{BackendError, LabSpec, LabStatus, NodeSpec, NodeStatus, Role, CONTROL_PLANE_OFFSET, WORKER_OFFSET};
use crate::net::{self, Ipv4Net};

use super::config::VagrantBackend;
use super::hypervisor::Hypervisor;
use super::runner::Limits;
use super::status::{parse_status, StatusReport};
use super::{failed_up, libvirt, render};

/// Rebuild a node of `instance` from its name (`acme-worker-3` → worker at .22).
pub(super) fn node_from_name(instance: &str, name: &str, subnet: &Ipv4Net) -> Option<NodeSpec> {
    if !libvirt::is_node_of(instance, name) {
        return None;
    }
    let rest = &name[instance.len() + 1..];
    let (role, base, n) = if let Some(n) = rest.strip_prefix("cp-") {
        (Role::ControlPlane, CONTROL_PLANE_OFFSET, n)
    } else {
        (Role::Worker, WORKER_OFFSET, rest.strip_prefix("worker-")?)
    };
    let index: u32 = n.parse().ok()?;
    Some(NodeSpec {
        name: name.to_string(),
        role,
        ip: net::nth_address(subnet, base + index - 1)?,
    })
}

impl VagrantBackend {
    /// `vagrant status --machine-readable` in `dir`.
    pub async fn machine_status(
        &self,
        dir: &Path,
        limits: &Limits,
    ) -> Result<StatusReport, BackendError> {
        let f = self
            .vagrant(dir, &["status", "--machine-readable"], limits, false)
            .await?
            .ok()?;
        Ok(parse_status(&f.stdout))
    }

    /// Machines Vagrant has created in `dir` for the configured provider (its own records,
    /// `.vagrant/machines/<name>/<provider>/id`), read without running Vagrant.
    pub fn recorded_machines(&self, dir: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Ok(entries) = std::fs::read_dir(dir.join(".vagrant").join("machines")) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = e.path().join(self.cfg.hypervisor.as_str()).join("id");
            if std::fs::metadata(&id).map(|m| m.len() > 0).unwrap_or(false) {
                out.insert(name);
            }
        }
        out
    }

    /// The spec's nodes plus nodes of the instance that Vagrant created but the spec no longer
    /// lists (their addresses follow the naming plan), for a Vagrantfile that can still
    /// destroy them.
    pub(super) fn with_leftovers(spec: &LabSpec, recorded: &BTreeSet<String>) -> (LabSpec, Vec<String>) {
        let mut full = spec.clone();
        let mut removed = Vec::new();
        for name in recorded {
            if spec.nodes.iter().any(|n| &n.name == name) {
                continue;
            }
            if let Some(node) = node_from_name(&spec.instance, name, &spec.subnet) {
                removed.push(name.clone());
                full.nodes.push(node);
            } else {
                tracing::warn!(machine = %name, "Vagrant records a machine that does not follow this instance's naming; leaving it");
            }
        }
        (full, removed)
    }

    pub(super) async fn observe_with(
        &self,
        spec: &LabSpec,
        limits: &Limits,
    ) -> Result<LabStatus, BackendError> {
        let dir = self.instance_dir(&spec.instance)?;
        let absent = |nodes: &[NodeSpec]| LabStatus {
            exists: false,
            nodes: nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    state: "not_created".into(),
                    healthy: false,
                })
                .collect(),
            extra_nodes: Vec::new(),
            problems: Vec::new(),
        };
        if !dir.join(render::VAGRANTFILE).is_file() {
            return Ok(absent(&spec.nodes));
        }
        let report = self.machine_status(&dir, limits).await?;
        let recorded = self.recorded_machines(&dir);
        let failed = failed_up::load(&dir).unwrap_or_default();
        let nodes: Vec<NodeStatus> = spec
            .nodes
            .iter()
            .map(|n| {
                let mut state = report
                    .get(&n.name)
                    .map(|m| m.state.clone())
                    .unwrap_or_else(|| "not_created".into());
                // Running, maybe, but its last bring-up failed: the next apply rebuilds it.
                if failed.machines.contains(&n.name) && state != "not_created" {
                    state = failed_up::STATE.into();
                }
                NodeStatus {
                    healthy: state == "running",
                    name: n.name.clone(),
                    state,
                }
            })
            .collect();
        let in_spec = |name: &str| spec.nodes.iter().any(|n| n.name == name);
        let mut extra: BTreeSet<String> =
            recorded.iter().filter(|m| !in_spec(m)).cloned().collect();
        extra.extend(
            report
                .machines
                .iter()
                .filter(|m| m.created() && !in_spec(&m.name))
                .map(|m| m.name.clone()),
        );
        let exists = nodes.iter().any(|n| n.state != "not_created") || !extra.is_empty();
        if !exists {
            return Ok(absent(&spec.nodes));
        }
        let problems = if self.cfg.hypervisor == Hypervisor::Libvirt {
            self.network_problems(&spec.instance).await?
        } else {
            Vec::new()
        };
        Ok(LabStatus {
            exists,
            nodes,
            extra_nodes: extra.into_iter().collect(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_nodes_are_rebuilt_from_their_names() {
        let subnet: Ipv4Net = "10.20.0.0/24".parse().unwrap();
        let n = node_from_name("acme", "acme-worker-3", &subnet).unwrap();
        assert_eq!(
            (n.role, n.ip.to_string()),
            (Role::Worker, "10.20.0.22".to_string())
        );
        let n = node_from_name("acme", "acme-cp-2", &subnet).unwrap();
        assert_eq!(
            (n.role, n.ip.to_string()),
            (Role::ControlPlane, "10.20.0.11".to_string())
        );
        assert!(node_from_name("acme", "globex-cp-1", &subnet).is_none());
    }
}
