//! The state of `homelab_instance` as Terraform stores it: the attributes (with their names in
//! the schema), the nested `nodes` and `timeouts`, and the private state of an object.

use serde::{Deserialize, Serialize};
use tf_provider::value::{self, Value};

use crate::schema::Number;

/// One node in state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    /// Node name.
    pub name: Value<String>,
    /// `control-plane` or `worker`.
    pub role: Value<String>,
    /// Address on the instance subnet.
    pub ip: Value<String>,
    /// The node's slice of the pod CIDR (netns).
    pub pod_cidr: Value<String>,
    /// Its pods' addresses (netns).
    pub pods: Value<Vec<String>>,
}

/// The `timeouts` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// Create timeout.
    pub create: Value<String>,
    /// Update timeout.
    pub update: Value<String>,
    /// Delete timeout.
    pub delete: Value<String>,
}

/// `homelab_instance` state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceState {
    /// = name.
    pub id: Value<String>,
    /// Instance name.
    pub name: Value<String>,
    /// `netns` / `vagrant`.
    pub backend: Value<String>,
    /// Control plane count.
    pub control_planes: Value<Number>,
    /// Worker count.
    pub workers: Value<Number>,
    /// Pods per node (netns).
    pub pods_per_node: Value<Number>,
    /// Host-only subnet.
    pub subnet: Value<String>,
    /// Pod CIDR.
    pub pod_cidr: Value<String>,
    /// Service CIDR.
    pub service_cidr: Value<String>,
    /// Management network (libvirt).
    pub mgmt_cidr: Value<String>,
    /// Gateway (.1).
    pub gateway: Value<String>,
    /// Nodes.
    pub nodes: Value<Vec<NodeState>>,
    /// Deprecated, always null (see the schema).
    pub federated_with: Value<Vec<String>>,
    /// Allocation time.
    pub created_at: Value<String>,
    /// Lab state summary.
    pub state: Value<String>,
    /// Vagrant box.
    #[serde(rename = "box")]
    pub box_name: Value<String>,
    /// Vagrant box version.
    pub box_version: Value<String>,
    /// vCPUs per VM.
    pub cpus: Value<Number>,
    /// Memory per VM.
    pub memory_mb: Value<Number>,
    /// Kubernetes minor.
    pub kubernetes_version: Value<String>,
    /// Install Kubernetes.
    pub provision: Value<bool>,
    /// Cilium release.
    pub cilium_version: Value<String>,
    /// Mirror of pkgs.k8s.io.
    pub kubernetes_package_mirror: Value<String>,
    /// apt proxy in the guests.
    pub apt_proxy: Value<String>,
    /// OCI registry mirror.
    pub image_registry_mirror: Value<String>,
    /// Mirror of the cilium-cli release folder.
    pub cilium_cli_mirror: Value<String>,
    /// Instance folder.
    pub dir: Value<String>,
    /// Vagrantfile path.
    pub vagrantfile_path: Value<String>,
    /// kubeconfig path.
    pub kubeconfig_path: Value<String>,
    /// kubeconfig content.
    pub kubeconfig: Value<String>,
    /// Whether `kubeconfig` holds the content (null: yes).
    pub kubeconfig_in_state: Value<bool>,
    /// API endpoint.
    pub api_endpoint: Value<String>,
    /// The lab host it lives on.
    pub host: Value<String>,
    /// Timeouts.
    #[serde(with = "value::serde_as_vec")]
    pub timeouts: Value<Timeouts>,
}

/// Private state: whether the last create stopped halfway (its lab is then kept in state even
/// when nothing of it runs, so `terraform destroy` cleans up what it left), and which run
/// planned the object (so the create half of its replacement is known as the same object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePrivate {
    /// The create failed before the lab was complete.
    #[serde(default)]
    pub incomplete: bool,
    /// The run whose `plan_update` planned this object (only in planned private state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_in_run: Option<String>,
}

pub(super) type Private = Value<InstancePrivate>;

pub(super) fn incomplete(p: &Private) -> bool {
    matches!(p, Value::Value(InstancePrivate { incomplete: true, .. }))
}
