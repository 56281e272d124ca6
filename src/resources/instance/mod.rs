//! `homelab_instance`: one client's lab. Plan reserves its networks in the registry so the plan
//! shows concrete CIDRs and proves they overlap nothing; apply claims them and converges the
//! backend; read reconciles with the registry and the backend (gone → re-create, damaged →
//! repair); import adopts a registry entry and its lab; destroy tears the lab down and releases
//! the networks.
//!
//! Why this file is one piece (about 1,000 lines): it is the resource's lifecycle in lifecycle
//! order (schema, validate, read, plan, create, update, destroy, import), each method mapping
//! Terraform's calls onto the registry and the backend, as the house's layout wants a
//! resource's file to be. What can be split off is: the state it stores (`state`) and the pure
//! mapping between that state and the domain (`mapping`, with its own unit tests).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tf_provider::schema::{Attribute, Block, Description, NestedBlock, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource};

use crate::backend::vagrant::Hypervisor;
use crate::backend::{
    self, Backend, BackendKind, LabSpec, LabStatus, OpControl,
};
use crate::context::{Configured, Shared};
use crate::diagnostics::{self, attribute_error, Message, OrReport};
use crate::net;
use crate::registry::{Allocation, Entry, Kind, LabRecord, Planned, Status, Want, Wants};
use crate::resources::names::Clash;
use crate::schema::{
    attributes, boolean, computed, deprecated, known, number, object, optional, optional_computed, required,
    sensitive, string, string_list, val, Number,
};
use crate::settings;

mod mapping;
mod state;

use mapping::*;
pub use state::{InstancePrivate, InstanceState, NodeState, Timeouts};
use state::{incomplete, Private};







/// The resource.
pub struct InstanceResource {
    shared: Arc<Shared>,
}



impl InstanceResource {
    /// The resource on the provider's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        InstanceResource { shared }
    }

    /// Its schema.
    pub fn resource_schema() -> Schema {
        let node = object(&[
            ("name", string()),
            ("role", string()),
            ("ip", string()),
            ("pod_cidr", string()),
            ("pods", string_list()),
        ]);
        let timeouts = Block {
            version: 1,
            description: Description::markdown("How long each operation may take before it is stopped."),
            attributes: attributes(vec![
                ("create", optional(string(), "Create timeout, a duration such as `10m`, longer than 0s and at most `24h`. Default 5m for `netns`, 30m for `vagrant`.")),
                ("update", optional(string(), "Update timeout (adding or removing workers, repairs), at most `24h`. Default 5m for `netns`, 30m for `vagrant`.")),
                ("delete", optional(string(), "Delete timeout, at most `24h`. Default 5m for `netns`, 15m for `vagrant`.")),
            ]),
            ..Default::default()
        };
        let attrs: Vec<(&str, Attribute)> = vec![
            ("id", computed(string(), "The instance name.")),
            ("name", required(string(), "Instance name: a lowercase DNS label of 1 to 32 characters, starting with a letter and not ending with `-`. It names the VMs or namespaces, the instance folder and the registry entry, so it is unique among the configurations sharing a `home`: a second resource (in this configuration or another) planning a name already held is refused at plan. Changing it replaces the instance.")),
            ("backend", optional_computed(string(), "`netns` (network namespaces: for CI and quick labs) or `vagrant` (VMs). Default: the provider's `default_backend`. Changing it replaces the instance.")),
            ("control_planes", optional_computed(number(), "Number of control-plane nodes, a whole number from 1 to 3 (default 1), at .10, .11, .12 of the subnet. Changing it replaces the instance.")),
            ("workers", optional_computed(number(), "Number of worker nodes, a whole number from 0 to 10 (default 2), from .20 up. Updated in place: nodes are added or removed, the others are untouched.")),
            ("pods_per_node", optional_computed(number(), "netns only: pod namespaces per node, a whole number from 0 to 8 (default 1). Each pod is addressed from its node's slice of `pod_cidr` (see `nodes`), wired to its node by a veth, and routes only its own instance (its subnet and pod CIDR, via its node); the nodes route each other's slices on the subnet. Nothing outside the instance has a route to its pods. Updated in place. Null for `vagrant`, whose clusters run real pods.")),
            ("subnet", optional_computed(string(), "Host-only subnet. Not set: the first free slot of the provider's `host_pool`, shown as a concrete value at plan (held by a reservation until apply), stepping around what other instances of the configuration pin. Set: must be a canonical CIDR of the pool's prefix that overlaps nothing and no special-purpose range (unspecified, loopback, link-local, multicast, reserved, broadcast); a pinned value takes over a network that another plan only reserved and had chosen automatically. Changing it replaces the instance (refused while the instance is federated).")),
            ("pod_cidr", optional_computed(string(), "Kubernetes pod CIDR. Not set: the first free slot of `pod_pool` (10.244.0.0/16 for the first instance). Set: checked like `subnet`. Changing it replaces the instance.")),
            ("service_cidr", optional_computed(string(), "Kubernetes service CIDR. Not set: the first free slot of `service_pool` (10.96.0.0/16 for the first instance). Set: checked like `subnet`. Changing it replaces the instance.")),
            ("mgmt_cidr", computed(string(), "The instance's own isolated management network (Vagrant on libvirt only; null otherwise).")),
            ("gateway", computed(string(), "The host's address on the subnet (.1).")),
            ("nodes", computed(AttributeTypeList::of(node), "Nodes: `name` (`<name>-cp-1`…, `<name>-worker-1`…), `role` (`control-plane` or `worker`), `ip`, and on `netns` the node's slice of the pod CIDR `pod_cidr` (a /24 of a /20 or wider pod CIDR: cp-N takes slice N-1, worker-N slice N+2, so a node keeps its slice when workers change) and its `pods`' addresses (the slice's .2 up; .1 is the node's side); on `vagrant` `pod_cidr` is null and `pods` empty (Cilium assigns pod addresses).")),
            ("federated_with", deprecated(computed(string_list(), "Deprecated and always null. It listed the instances this one is federated with, but another resource (`homelab_federation`) changed it, so every refresh after a federation change reported drift (`plan -refresh-only -detailed-exitcode` exiting 2). Read the federations of an instance from the data source `homelab_cidr_allocation` (`federated_with`), or from the `homelab_federation` resources."))),
            ("created_at", computed(string(), "When the instance was allocated (RFC 3339).")),
            ("state", computed(string(), "What the backend reports: `running` when every node is up and wired as planned; otherwise what is wrong (a plan then shows the repair).")),
            ("box", optional_computed(string(), "Vagrant only: box name. Default `bento/ubuntu-24.04`. Changing it replaces the instance.")),
            ("box_version", optional(string(), "Vagrant only: box version constraint.")),
            ("cpus", optional_computed(number(), "Vagrant only: vCPUs per VM, a whole number from 1 to 1024 (default 2).")),
            ("memory_mb", optional_computed(number(), "Vagrant only: memory per VM in MiB, a whole number from 256 to 1048576 (default 2048).")),
            ("kubernetes_version", optional_computed(string(), "Vagrant only: Kubernetes version to install with kubeadm: a minor (default `1.33`: its newest patch release) or a full version such as `1.33.2` (pinned, and held). A box whose kubeadm already has this version keeps its packages. Changing it replaces the instance.")),
            ("provision", optional_computed(boolean(), "Vagrant only: install Kubernetes (containerd, kubeadm, Cilium) and join the workers (default true); false gives plain VMs.")),
            ("cilium_version", optional_computed(string(), "Vagrant with `provision` only: the Cilium release installed (default `1.17.4`), a full version. Changing it replaces the instance.")),
            ("kubernetes_package_mirror", optional(string(), "Vagrant with `provision` only: an http(s) URL that replaces `https://pkgs.k8s.io/core:/stable:` for kubeadm, kubelet and kubectl: a mirror in pkgs.k8s.io's layout, serving `<url>/v1.33/deb/` with its `Release.key`. Changes in place (used by nodes set up from then on).")),
            ("apt_proxy", optional(string(), "Vagrant with `provision` only: an http(s) URL of an apt proxy (e.g. apt-cacher-ng) that every apt download in the guests goes through: the box's distribution archive and the Kubernetes packages (for https repositories the proxy must pass CONNECT through). Changes in place.")),
            ("image_registry_mirror", optional(string(), "Vagrant with `provision` only: an http(s) URL of an OCI registry mirror that containerd tries first for images of registry.k8s.io, quay.io, docker.io and ghcr.io (falling back to the registry itself); containerd names the registry in each request as `?ns=<registry>`, as pull-through caches such as Zot or Harbor expect. Changes in place.")),
            ("cilium_cli_mirror", optional(string(), "Vagrant with `provision` only: an http(s) URL of a folder holding `cilium-linux-amd64.tar.gz` and `cilium-linux-amd64.tar.gz.sha256sum` of cilium-cli v0.18.3, used instead of its GitHub release. A box with `/usr/local/bin/cilium` downloads nothing. Changes in place.")),
            ("dir", computed(string(), "Vagrant only: the instance folder `<home>/instances/<name>`: the generated Vagrantfile, the provisioning scripts, the kubeconfig, and with libvirt each machine's serial console log under `console/` (its last lines are shown when a boot fails).")),
            ("vagrantfile_path", computed(string(), "Vagrant only: the generated Vagrantfile.")),
            ("host", computed(string(), "The lab host the instance lives on, as the registry records it: the machine's host name, and for `netns` `<host name>/<netns_host>`. With the registry on etcd, several lab hosts share one address plan; each lab is built, checked against the host's own networks and torn down on its own host.")),
            ("kubeconfig_path", computed(string(), "Vagrant with `provision` only: the kubeconfig file (mode 0600).")),
            ("kubeconfig", sensitive(computed(string(), "Vagrant with `provision` only: the kubeconfig's content (sensitive: hidden in output, but stored in the state and saved plans); null when `kubeconfig_in_state = false`."))),
            ("kubeconfig_in_state", optional(boolean(), "Vagrant with `provision` only: whether `kubeconfig` holds the kubeconfig's content (default true). Set false to keep every credential out of Terraform's state and plan files, and configure other providers from the ephemeral `homelab_kubeconfig` instead (Terraform 1.10+, OpenTofu 1.11+). Changes in place.")),
            ("api_endpoint", computed(string(), "Vagrant with `provision` only: `https://<cp-1 ip>:6443`; with several control planes `https://<subnet .5>:6443`, a virtual IP that keepalived moves to a control plane whose API server is healthy, so the cluster outlives cp-1.")),
        ];
        let mut blocks = std::collections::HashMap::new();
        blocks.insert("timeouts".to_string(), NestedBlock::Optional(timeouts));
        Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::markdown(
                    "An isolated lab for one client: its own host-only subnet, pod CIDR and service CIDR, disjoint from every \
                     other instance and from the host's own networks, checked at plan time. The `netns` backend builds each node \
                     as a network namespace on a bridge inside a lab-host namespace; the `vagrant` backend builds VMs.",
                ),
                attributes: attributes(attrs),
                blocks,
                ..Default::default()
            },
        }
    }
}

/// `list(object(...))`.
struct AttributeTypeList;
impl AttributeTypeList {
    fn of(t: tf_provider::schema::AttributeType) -> tf_provider::schema::AttributeType {
        tf_provider::schema::AttributeType::List(Box::new(t))
    }
}

/// The state holds `entry` (a refresh, plan or destroy of it is running): a creation of it
/// that a killed run began is over (see `registry::interrupted`).
fn confirm_held(ctx: &Configured, diags: &mut Diagnostics, entry: &crate::registry::Entry) {
    if entry.status == Status::Allocated && entry.creating.is_some() {
        if let Err(e) = ctx.registry.confirm(&entry.name) {
            diagnostics::warning(diags, format!("{}: could not record in the registry that the state holds it", ctx_name(&entry.name)), e.to_string());
        }
    }
}

fn ctx_name(name: &str) -> String {
    format!("homelab_instance {name:?}")
}










/// What the configuration asks for each network. `None` (with an error on the attribute)
/// when a pinned value is not a network an instance may have: it is never taken for "any".
fn wants(ctx: &Configured, diags: &mut Diagnostics, config: &InstanceState, kind: BackendKind) -> Option<Wants> {
    let mut ok = true;
    let mut w = |attr: &'static str, v: &Value<String>| match v {
        Value::Value(t) => match settings::cidr_setting(attr, t) {
            Ok(n) => Want::Pinned(n),
            Err(e) => {
                attribute_error(diags, attr, format!("Invalid {attr}"), e.message);
                ok = false;
                Want::Auto
            }
        },
        _ => Want::Auto,
    };
    let wants = Wants {
        subnet: w("subnet", &config.subnet),
        pod_cidr: w("pod_cidr", &config.pod_cidr),
        service_cidr: w("service_cidr", &config.service_cidr),
        mgmt_cidr: ctx.backends.needs_mgmt_network(kind).then_some(Want::Auto),
    };
    ok.then_some(wants)
}



fn lab_record(ctx: &Configured, d: &Desired, settings_of_entry: Option<&BTreeMap<String, String>>) -> LabRecord {
    let mut settings = settings_of_entry
        .cloned()
        .unwrap_or_else(|| ctx.backends.lab_settings(d.kind));
    if let Some(v) = &d.vagrant {
        backend::vagrant::options_into_settings(v, &mut settings);
    }
    if d.kind == BackendKind::Netns {
        settings.insert(backend::pods::SETTING.into(), d.pods_per_node.to_string());
    }
    let host = lab_host(d.kind, &settings);
    LabRecord {
        control_planes: d.control_planes,
        workers: d.workers,
        settings,
        host: Some(host),
    }
}

/// The lab host an instance of `kind` with these backend settings lives on (see
/// [`LabRecord::host`]).
fn lab_host(kind: BackendKind, settings: &BTreeMap<String, String>) -> String {
    let machine = crate::audit::host_name();
    match (kind, settings.get("netns_host")) {
        (BackendKind::Netns, Some(ns)) => format!("{machine}/{ns}"),
        _ => machine,
    }
}

/// The `host` attribute of an instance whose registry entry is `entry`.
fn host_of(entry: &crate::registry::Entry) -> Value<String> {
    entry.lab.as_ref().and_then(|l| l.host.clone()).map(val).unwrap_or(Value::Null)
}




/// Read the kubeconfig the provisioning fetched (vagrant with provision), if any, unless it is
/// kept out of the state.
fn kubeconfig_value(state: &InstanceState) -> Value<String> {
    if !kubeconfig_in_state(state) {
        return Value::Null;
    }
    match known(&state.kubeconfig_path) {
        Some(p) => std::fs::read_to_string(&p).map(val).unwrap_or(Value::Null),
        None => Value::Null,
    }
}


/// The hypervisor a new vagrant lab would be built with.
fn entry_hypervisor(ctx: &Configured, d: &Desired) -> Hypervisor {
    ctx.backends
        .lab_settings(d.kind)
        .get("hypervisor")
        .and_then(|h| Hypervisor::parse(h))
        .unwrap_or(ctx.choices.hypervisor)
}

impl InstanceResource {
    /// What create and update start from: the context, the desired lab, the diagnostics'
    /// context, and the networks the plan holds.
    fn apply_preamble(
        &self,
        diags: &mut Diagnostics,
        config_state: &InstanceState,
        planned_state: &InstanceState,
    ) -> Option<(Arc<Configured>, Desired, String, Allocation)> {
        let ctx = self.shared.get(diags)?;
        let d = desired(ctx.choices.default_backend, diags, config_state)?;
        let context = ctx_name(&d.name);
        let Some(allocation) = allocation_of(planned_state) else {
            diags.root_error(format!("{context}: no networks planned"), "The plan holds no networks for this instance; run `terraform plan` again.");
            return None;
        };
        Some((ctx, d, context, allocation))
    }

    fn backend_for(&self, ctx: &Configured, d: &Desired, entry: Option<&Entry>) -> Arc<dyn Backend> {
        let settings = entry
            .and_then(|e| e.lab.as_ref())
            .map(|l| l.settings.clone())
            .unwrap_or_else(|| ctx.backends.lab_settings(d.kind));
        ctx.backends.backend(d.kind, &settings)
    }

    /// Routes towards federation peers, put back after nodes were added or rebuilt.
    async fn restore_federation_routes(
        &self,
        ctx: &Configured,
        backend: &dyn Backend,
        spec: &LabSpec,
        diags: &mut Diagnostics,
    ) {
        let Ok(doc) = ctx.registry.snapshot() else { return };
        let Some(entry) = doc.instances.get(&spec.instance) else { return };
        // A netns pair opens pods too (see `federation`): the peer's pod CIDR in every node and
        // pod, and this instance's pod slices on the lab host (new nodes have new slices).
        let pods = entry.backend == BackendKind::Netns.as_str();
        for peer in &entry.federated {
            if let Some(p) = doc.instances.get(peer) {
                let ctl = OpControl::with_timeout(Duration::from_secs(120));
                let mut dests = vec![p.allocation.subnet];
                if pods && p.backend == entry.backend {
                    dests.push(p.allocation.pod_cidr);
                }
                for dest in dests {
                    if let Err(e) = backend.set_guest_route(spec, dest, true, &ctl).await {
                        diagnostics::error(diags, &format!("restoring the route to federated {peer}"), &e);
                    }
                }
            }
        }
        if pods && !entry.federated.is_empty() {
            let ctl = OpControl::with_timeout(Duration::from_secs(120));
            if let Err(e) = backend.set_host_pod_routes(spec, true, &ctl).await {
                diagnostics::error(diags, "restoring the lab host's routes to the pods of a federated instance", &e);
            }
        }
    }
}

impl InstanceResource {
    /// `plan_create`: a new object, the create half of a replacement, or the replacement of a
    /// tainted object.
    async fn plan_new(
        &self,
        ctx: &Configured,
        diags: &mut Diagnostics,
        proposed_state: InstanceState,
        config_state: InstanceState,
        prior_private_state: Private,
    ) -> Option<(InstanceState, Private)> {
        let mut planned = proposed_state;
        let unknown_inputs = config_state.name.is_unknown()
            || config_state.backend.is_unknown()
            || config_state.subnet.is_unknown()
            || config_state.pod_cidr.is_unknown()
            || config_state.service_cidr.is_unknown()
            || config_state.control_planes.is_unknown()
            || config_state.workers.is_unknown();
        if unknown_inputs {
            // Without the name or pinned values there is nothing to reserve: values come at apply.
            for v in [&mut planned.id, &mut planned.subnet, &mut planned.pod_cidr, &mut planned.service_cidr, &mut planned.mgmt_cidr, &mut planned.gateway, &mut planned.created_at, &mut planned.state] {
                *v = Value::Unknown;
            }
            planned.nodes = Value::Unknown;
            planned.federated_with = Value::Null;
            return Some((planned, Value::Null));
        }
        // Values unknown at validation (variables, other resources) are known now.
        validate_config(diags, &config_state);
        if !diags.errors.is_empty() {
            return None;
        }
        let d = desired(ctx.choices.default_backend, diags, &config_state)?;
        if let Some(v) = &d.vagrant {
            if let Err(e) = backend::vagrant::check_options(v) {
                attribute_error(diags, e.attribute, format!("Invalid {}", e.attribute), e.message);
            }
        }
        if !diags.errors.is_empty() {
            return None;
        }
        let context = ctx_name(&d.name);
        // The create half of this run's replacement of an object in state is that object;
        // anything else is a new object, and a name is held by one object per run.
        let replacement = matches!(&prior_private_state, Value::Value(InstancePrivate { planned_in_run: Some(run), .. }) if *run == ctx.registry.origin().run);
        if !replacement {
            if let Err(clash) = ctx.names.create(&d.name) {
                name_clash(diags, ctx, &d.name, clash);
                return None;
            }
        }
        let backend = self.backend_for(ctx, &d, None);
        backend.preflight().await.or_report(diags, &context)?;
        let host = ctx.host_networks().await.or_report(diags, &format!("{context}: reading the host's networks"))?;
        let w = wants(ctx, diags, &config_state, d.kind)?;
        // Checks on the networks themselves come before the reservation: a refused plan writes
        // nothing.
        if d.kind == BackendKind::Vagrant && entry_hypervisor(&ctx, &d) == Hypervisor::VirtualBox {
            let subnet = match w.subnet {
                Want::Pinned(n) => Some(n),
                Want::Auto => ctx.registry.preview(&d.name, &w, &host).ok().map(|p| p.allocation.subnet),
            };
            if let Some(subnet) = subnet {
                let allowed = backend::vagrant::virtualbox_allowed_ranges_here();
                if let Err(e) = backend::vagrant::check_virtualbox_subnet(&subnet, &allowed) {
                    attribute_error(diags, "subnet", "Subnet not permitted by VirtualBox".into(), e.message);
                    return None;
                }
            }
        }
        let allocation = match ctx.registry.reserve(&d.name, &w, d.kind.as_str(), &host) {
            Ok(Planned::Reserved(entry)) => entry.allocation,
            Ok(Planned::Existing { entry, allocation }) => {
                // The name is allocated. This run may create it again only where the object
                // that holds it goes first: its own replacement, or a tainted object of this
                // workspace's state. Anything else (another configuration, a state that lost
                // it) would make two owners of one lab.
                let mine = entry.owner.as_ref().is_none_or(|o| *o == ctx.registry.origin().workspace);
                // An interrupted creation (or removal) of this workspace, no state ever showed
                // it: adopted (see registry::interrupted).
                let interrupted = entry.interrupted(&ctx.registry.origin().run);
                let replaces_own = mine && (replacement || interrupted || ctx.names.tainted_in_state(&d.name));
                let lab_gone = mine
                    && !replaces_own
                    && match lab_spec(&d, &entry.allocation) {
                        Some(spec) => matches!(
                            self.backend_for(ctx, &d, Some(&entry)).observe(&spec).await,
                            Ok(LabStatus { exists: false, .. })
                        ),
                        None => false,
                    };
                if !(replaces_own || lab_gone) {
                    let e = crate::registry::RegistryError::AlreadyAllocated {
                        name: d.name.clone(),
                        allocation: entry.allocation,
                        backend: entry.backend.clone(),
                        created_at: crate::registry::rfc3339(entry.created_at),
                        owner: entry.owner.clone(),
                    };
                    diagnostics::error(diags, &context, &e);
                    return None;
                }
                if !entry.federated.is_empty() {
                    refuse_federated_replacement(diags, &d.name, &entry.federated, "Replacing it (`-replace`, `terraform taint`, or a replace-forcing change)");
                    return None;
                }
                allocation
            }
            Err(e) => {
                diagnostics::error(diags, &context, &e);
                return None;
            }
        };
        if lab_spec(&d, &allocation).is_none() {
            attribute_error(
                diags,
                "subnet",
                "Subnet too small".into(),
                format!("{} cannot hold the nodes at .10 to .{}", allocation.subnet, 19 + d.workers.max(1)),
            );
            return None;
        }
        if !pods_fit(diags, &d, &allocation) {
            return None;
        }
        fill(&mut planned, &ctx.settings.home, &d, &allocation);
        planned.timeouts = config_state.timeouts.clone();
        planned.created_at = Value::Unknown;
        // Where the apply runs (a pipeline may plan on one machine and apply on another).
        planned.host = Value::Unknown;
        planned.state = Value::Unknown;
        planned.federated_with = Value::Null;
        planned.kubeconfig = match &d.vagrant {
            Some(v) if v.provision && kubeconfig_in_state(&config_state) => Value::Unknown,
            _ => Value::Null,
        };
        Some((planned, Value::Null))
    }

    /// `plan_update`: an object in state, changed in place, replaced, or unchanged.
    async fn plan_change(
        &self,
        ctx: &Configured,
        diags: &mut Diagnostics,
        prior_state: InstanceState,
        proposed_state: InstanceState,
        config_state: InstanceState,
        prior_private_state: Private,
    ) -> Option<(InstanceState, Private, Vec<AttributePath>)> {
        let mut planned = proposed_state;
        let mut replace: Vec<&'static str> = Vec::new();
        validate_config(diags, &config_state);
        if !diags.errors.is_empty() {
            return None;
        }
        if let Some(name) = known(&prior_state.name) {
            if let Err(clash) = ctx.names.keep(&name) {
                name_clash(diags, ctx, &name, clash);
                return None;
            }
            if let Ok(Some(entry)) = ctx.registry.get(&name) {
                confirm_held(ctx, diags, &entry);
            }
        }
        let Some(d) = desired(ctx.choices.default_backend, diags, &config_state) else {
            return Some((planned, prior_private_state, vec![]));
        };
        if !diags.errors.is_empty() {
            return None;
        }
        let differs = |a: &Value<String>, b: &str| known(a).as_deref() != Some(b);
        if differs(&prior_state.name, &d.name) {
            replace.push("name");
        }
        if differs(&prior_state.backend, d.kind.as_str()) {
            replace.push("backend");
        }
        if whole(&prior_state.control_planes) != Some(i64::from(d.control_planes)) {
            replace.push("control_planes");
        }
        for (attr, cfg, prior) in [
            ("subnet", &config_state.subnet, &prior_state.subnet),
            ("pod_cidr", &config_state.pod_cidr, &prior_state.pod_cidr),
            ("service_cidr", &config_state.service_cidr, &prior_state.service_cidr),
        ] {
            if cfg.is_unknown() || (cfg.is_value() && cfg != prior) {
                replace.push(attr);
            }
        }
        if let Some(v) = &d.vagrant {
            if differs(&prior_state.box_name, &v.r#box) {
                replace.push("box");
            }
            if known(&prior_state.box_version) != v.box_version {
                replace.push("box_version");
            }
            if whole(&prior_state.cpus) != Some(i64::from(v.cpus)) {
                replace.push("cpus");
            }
            if whole(&prior_state.memory_mb) != Some(i64::from(v.memory_mb)) {
                replace.push("memory_mb");
            }
            if differs(&prior_state.kubernetes_version, &v.kubernetes_version) {
                replace.push("kubernetes_version");
            }
            if known(&prior_state.provision) != Some(v.provision) {
                replace.push("provision");
            }
            // Prior states written before the attribute existed have it null: the default
            // was installed, so only a different value replaces.
            let prior_cilium = known(&prior_state.cilium_version).unwrap_or_else(|| backend::vagrant::DEFAULT_CILIUM_VERSION.to_string());
            if prior_cilium != v.cilium_version {
                replace.push("cilium_version");
            }
        }
        let mut allocation = allocation_of(&prior_state);
        for (kind_attr, cfg) in [("subnet", &config_state.subnet), ("pod_cidr", &config_state.pod_cidr), ("service_cidr", &config_state.service_cidr)] {
            if let (Some(a), Some(text)) = (allocation.as_mut(), known(cfg)) {
                if let Ok(n) = net::parse_canonical(&text) {
                    match kind_attr {
                        "subnet" => a.subnet = n,
                        "pod_cidr" => a.pod_cidr = n,
                        _ => a.service_cidr = n,
                    }
                }
            }
        }
        if !replace.is_empty() {
            // Destroying the lab would cut the federation: apply would refuse, so plan does.
            let name = known(&prior_state.name).unwrap_or_else(|| d.name.clone());
            if let Ok(Some(e)) = ctx.registry.get(&name) {
                if !e.federated.is_empty() {
                    let attrs: Vec<String> = replace.iter().map(|a| format!("`{a}`")).collect();
                    refuse_federated_replacement(diags, &name, &e.federated, &format!("Changing {} replaces it", attrs.join(", ")));
                    return None;
                }
            }
        }
        match allocation {
            Some(a) if !config_state.subnet.is_unknown() => {
                if lab_spec(&d, &a).is_none() {
                    attribute_error(diags, "workers", "Too many nodes for the subnet".into(), format!("{} cannot hold {} workers", a.subnet, d.workers));
                    return None;
                }
                if !pods_fit(diags, &d, &a) {
                    return None;
                }
                fill(&mut planned, &ctx.settings.home, &d, &a);
            }
            _ => {}
        }
        planned.timeouts = config_state.timeouts.clone();
        planned.federated_with = Value::Null;
        planned.created_at = prior_state.created_at.clone();
        planned.kubeconfig = match (kubeconfig_in_state(&config_state), &prior_state.kubeconfig) {
            (false, _) => Value::Null,
            // Back in the state: the content is read at apply.
            (true, Value::Null) if d.vagrant.as_ref().is_some_and(|v| v.provision) && kubeconfig_in_state(&prior_state) != kubeconfig_in_state(&config_state) => Value::Unknown,
            (true, prior) => prior.clone(),
        };
        // A lab that read found damaged or halted is planned back to running: that is the repair.
        planned.state = val("running".to_string());
        if !replace.is_empty() {
            planned.state = Value::Unknown;
            planned.created_at = Value::Unknown;
        }
        // Marked with this run, so that the create half of a replacement (a replace-forcing
        // change, or `-replace`) is known as this object.
        let mut private = known(&prior_private_state).unwrap_or_default();
        private.planned_in_run = Some(ctx.registry.origin().run.clone());
        Some((planned, val(private), replace.into_iter().map(AttributePath::new).collect()))
    }
}

/// Refuse a plan that would replace a federated instance: its destroy would be refused.
fn refuse_federated_replacement(diags: &mut Diagnostics, name: &str, peers: &[String], what: &str) {
    let federations: Vec<String> = peers
        .iter()
        .map(|p| if name <= p.as_str() { format!("{name}+{p}") } else { format!("{p}+{name}") })
        .collect();
    attribute_error(
        diags,
        "name",
        format!("Instance `{name}` is federated and cannot be replaced"),
        format!(
            "{what}: its lab would be destroyed and built again, which the federation {} it is part of forbids (a federated instance is never destroyed before its federation). \
             Destroy the federation first (remove its homelab_federation from the configuration and apply, or `terraform destroy -target=homelab_federation.<name>`), \
             then apply this change, then declare the federation again.",
            federations.join(", ")
        ),
    );
}

/// Two resource objects of this run use one instance name: say so, naming the resources of
/// the root module that set the name literally, when there are any.
fn name_clash(diags: &mut Diagnostics, ctx: &Configured, name: &str, clash: Clash) {
    let why = match clash {
        Clash::TwoCreates => "Two homelab_instance resources of this configuration plan an instance of this name.",
        Clash::KeptByExisting => "A homelab_instance already in this state holds this name, and another resource of this configuration plans to create an instance of the same name.",
        Clash::DestroyedByExisting => "A homelab_instance that left the configuration is destroyed by this plan, and another resource plans to create an instance of the same name. If the resource was renamed (or its `count`/`for_each` key changed), add a `moved` block from the old address to the new one, so the instance is kept; otherwise apply the removal first, then the new resource.",
        Clash::TwoExisting => "Two homelab_instance resources in this state hold an instance of this name.",
    };
    let dir = std::path::PathBuf::from(&ctx.registry.origin().workspace.dir);
    let found = super::config_scan::resources_setting(&dir, "homelab_instance", "name", name);
    let which = if found.is_empty() {
        format!("Look for the homelab_instance resources whose `name` is {name:?} (Terraform does not tell providers resource addresses, and no `name = {name:?}` was found in the root module's files).")
    } else {
        format!("Resources that set `name = {name:?}`: {}.", found.join(", "))
    };
    attribute_error(
        diags,
        "name",
        format!("Instance name `{name}` is used by two resources"),
        format!("{why} Both would own one lab (and destroying either would destroy it), so this plan is refused before anything is made. {which} Give each instance its own name."),
    );
}

#[async_trait]
impl Resource for InstanceResource {
    type State<'a> = InstanceState;
    type PrivateState<'a> = Private;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Self::resource_schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        validate_config(diags, &config);
        // Write down what this configuration pins, so that the plan's automatic choices step
        // around it whatever order Terraform plans the instances in.
        if let Value::Value(name) = &config.name {
            let pins: Vec<(Kind, net::Ipv4Net)> = [
                (Kind::Subnet, &config.subnet),
                (Kind::PodCidr, &config.pod_cidr),
                (Kind::ServiceCidr, &config.service_cidr),
            ]
            .into_iter()
            .filter_map(|(kind, v)| known(v).and_then(|t| net::parse_lab_network(&t).ok()).map(|c| (kind, c)))
            .collect();
            self.shared.declared.record(name, pins, self.shared.origin());
        }
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let ctx = self.shared.get(diags)?;
        let name = known(&state.name)?;
        // An object of this name is in state: a create of the name in this run replaces it
        // (taint), unless another object keeps the name too.
        ctx.names.read(&name);
        let entry = match ctx.registry.get(&name) {
            Ok(e) => e,
            Err(e) => {
                diagnostics::error(diags, &ctx_name(&name), &e);
                return Some((state, private_state));
            }
        };
        let Some(entry) = entry.filter(|e| e.status == Status::Allocated) else {
            tracing::info!(instance = %name, "registry entry gone: the instance will be planned for re-creation");
            return None;
        };
        // A destroy of it that a killed run began: keep it in state however little is left, so
        // that the next destroy finishes it (or the next apply re-makes it).
        let destroy_interrupted = ctx.registry.destroy_interrupted(&entry);
        confirm_held(&ctx, diags, &entry);
        let mut d = desired(ctx.choices.default_backend, &mut Diagnostics::default(), &state)?;
        d.kind = BackendKind::parse(&entry.backend).unwrap_or(d.kind);
        let backend = self.backend_for(&ctx, &d, Some(&entry));
        let spec = lab_spec(&d, &entry.allocation)?;
        let status = match backend.observe(&spec).await {
            Ok(s) => s,
            Err(e) => {
                diagnostics::error(diags, &format!("{}: reading the lab", ctx_name(&name)), &e);
                return Some((state, private_state));
            }
        };
        if !status.exists {
            if incomplete(&private_state) || destroy_interrupted {
                // A create that stopped halfway, or a destroy: keep it, so destroy (or the
                // replacement of the tainted instance) cleans up what it left.
                let mut kept = state;
                kept.state = val(describe(&status));
                return Some((kept, private_state));
            }
            tracing::info!(instance = %name, "lab gone: the instance will be planned for re-creation");
            // Its networks stay reserved for the re-create; a destroy leaves nothing allocated.
            if let Err(e) = ctx.registry.demote(&name, "the lab is gone (found by refresh)") {
                diagnostics::warning(diags, format!("{}: could not release the networks of a lab that is gone", ctx_name(&name)), e.to_string());
            }
            return None;
        }
        let mut new = state.clone();
        fill(&mut new, &ctx.settings.home, &d, &entry.allocation);
        new.timeouts = state.timeouts.clone();
        new.created_at = val(crate::registry::rfc3339(entry.created_at));
        new.host = host_of(&entry);
        new.federated_with = Value::Null;
        new.state = val(describe(&status));
        new.kubeconfig = kubeconfig_value(&new);
        Some((new, private_state))
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let ctx = self.shared.get(diags)?;
        let planned = self.plan_new(&ctx, diags, proposed_state, config_state, prior_private_state).await;
        ctx.after_plan(diags);
        planned
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        proposed_state: Self::State<'a>,
        config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        let ctx = self.shared.get(diags)?;
        let planned = self.plan_change(&ctx, diags, prior_state, proposed_state, config_state, prior_private_state).await;
        ctx.after_plan(diags);
        planned
    }

    async fn plan_destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        let ctx = self.shared.get(diags)?;
        let name = known(&prior_state.name)?;
        if let Err(clash) = ctx.names.destroy(&name) {
            name_clash(diags, &ctx, &name, clash);
            ctx.after_plan(diags);
            return None;
        }
        // Refuse at plan when the registry still lists federations: destroy would fail anyway.
        if let Ok(Some(e)) = ctx.registry.get(&name) {
            confirm_held(&ctx, diags, &e);
            if !e.federated.is_empty() {
                let pending: Vec<String> = e.federated.clone();
                // Terraform destroys federations first when they are in the same
                // configuration; only warn here, delete checks again.
                diagnostics::warning(
                    diags,
                    format!("Instance `{name}` is federated with {}", pending.join(", ")),
                    "Its federations must be destroyed before it; if they are not part of this run, the destroy of this instance will be refused.".into(),
                );
            }
        }
        Some(prior_private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned_state: Self::State<'a>,
        config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let (ctx, d, context, allocation) = self.apply_preamble(diags, &config_state, &planned_state)?;
        let host = ctx.host_networks().await.or_report(diags, &format!("{context}: reading the host's networks"))?;
        let record = lab_record(&ctx, &d, None);
        // A destroy of this run removing an interrupted creation of this name goes first: the
        // networks it frees are the ones planned here (see registry::interrupted).
        let ctl = op_control(&planned_state, d.kind, "create");
        let deadline = std::time::Instant::now() + ctl.timeout;
        while matches!(ctx.registry.being_removed_by_this_run(&d.name), Ok(true)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let entry = ctx.registry.claim(&d.name, &allocation, d.kind.as_str(), record.clone(), &host).or_report(diags, &context)?;
        // A re-created lab (its registry entry survived) takes the shape now asked for.
        if entry.lab.as_ref() != Some(&record) {
            ctx.registry.update_lab(&d.name, record).or_report(diags, &context)?;
        }
        let backend = self.backend_for(&ctx, &d, Some(&entry));
        let spec = lab_spec(&d, &allocation)?;
        let mut state = planned_state;
        state.created_at = val(crate::registry::rfc3339(entry.created_at));
        state.host = host_of(&entry);
        state.federated_with = Value::Null;
        let _ = planned_private_state;
        let mut private = InstancePrivate::default();
        let converged = backend.converge(&spec, &ctl).await;
        // Terraform records what this create answers (a failed one as tainted): the creation is
        // over, unless Terraform died meanwhile and nobody will record it (the next apply of
        // the workspace adopts it then).
        if !crate::parent::terraform_gone() {
            if let Err(e) = ctx.registry.finish(&d.name) {
                diagnostics::warning(diags, format!("{context}: could not record in the registry that the creation is over"), e.to_string());
            }
        }
        match converged {
            Ok(status) => {
                state.state = val(describe(&status));
                state.kubeconfig = kubeconfig_value(&state);
                if !status.healthy() {
                    diags.root_error(
                        format!("{context}: the lab did not come up healthy"),
                        format!("After bringing it up the backend reports: {}. Run `terraform apply` again to repair it, or `terraform destroy` to remove it.", describe(&status)),
                    );
                }
            }
            Err(e) => {
                // Return what exists, so Terraform records the instance (tainted) and the next
                // apply or destroy cleans up: no orphaned namespaces, VMs or registry entries.
                diagnostics::error(diags, &format!("{context}: bringing the lab up"), &e);
                state.state = val(match backend.observe(&spec).await {
                    Ok(s) => describe(&s),
                    Err(_) => "unknown (bring-up failed)".into(),
                });
                state.kubeconfig = kubeconfig_value(&state);
                private.incomplete = true;
            }
        }
        Some((state, val(private)))
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        planned_state: Self::State<'a>,
        config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let (ctx, d, context, allocation) = self.apply_preamble(diags, &config_state, &planned_state)?;
        let entry = match ctx.registry.get(&d.name) {
            Ok(Some(e)) => e,
            Ok(None) => {
                diagnostics::error(diags, &context, &crate::registry::RegistryError::NotFound { name: d.name.clone() });
                return None;
            }
            Err(e) => {
                diagnostics::error(diags, &context, &e);
                return None;
            }
        };
        let backend = self.backend_for(&ctx, &d, Some(&entry));
        let spec = lab_spec(&d, &allocation)?;
        let mut state = planned_state;
        match backend.converge(&spec, &op_control(&state, d.kind, "update")).await {
            Ok(status) => {
                self.restore_federation_routes(&ctx, backend.as_ref(), &spec, diags).await;
                state.state = val(describe(&status));
                let settings = entry.lab.as_ref().map(|l| &l.settings);
                if let Err(e) = ctx.registry.update_lab(&d.name, lab_record(&ctx, &d, settings)) {
                    diagnostics::error(diags, &context, &e);
                }
            }
            Err(e) => {
                diagnostics::error(diags, &format!("{context}: updating the lab"), &e);
                let mut kept = prior_state;
                kept.state = val(match backend.observe(&spec).await {
                    Ok(s) => describe(&s),
                    Err(_) => "unknown (update failed)".into(),
                });
                return Some((kept, planned_private_state));
            }
        }
        state.kubeconfig = kubeconfig_value(&state);
        let _ = planned_private_state;
        Some((state, val(InstancePrivate::default())))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let ctx = self.shared.get(diags)?;
        let name = known(&prior_state.name)?;
        let context = ctx_name(&name);
        ctx.names.torn_down(&name);
        ctx.remove_interrupted(diags).await;
        let entry = ctx.registry.get(&name).or_report(diags, &context)?;
        if let Some(e) = entry.as_ref().filter(|e| !e.federated.is_empty()) {
            let err = crate::registry::RegistryError::Federated {
                name: name.clone(),
                peers: e.federated.join(", "),
                federations: e
                    .federated
                    .iter()
                    .map(|p| if name.as_str() <= p.as_str() { format!("{name}+{p}") } else { format!("{p}+{name}") })
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            diagnostics::error(diags, &context, &err);
            return None;
        }
        let mut d = desired(ctx.choices.default_backend, &mut Diagnostics::default(), &prior_state)?;
        if let Some(k) = known(&prior_state.backend).and_then(|b| BackendKind::parse(&b)) {
            d.kind = k;
        }
        let backend = self.backend_for(&ctx, &d, entry.as_ref());
        ctx.registry.begin_destroy(&name).or_report(diags, &context)?;
        if let Some(spec) = allocation_of(&prior_state).and_then(|a| lab_spec(&d, &a)) {
            backend.teardown(&spec, &op_control(&prior_state, d.kind, "delete")).await.or_report(diags, &format!("{context}: tearing the lab down"))?;
        }
        ctx.registry.release(&name).or_report(diags, &context)?;
        Some(())
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let ctx = self.shared.get(diags)?;
        let context = ctx_name(&id);
        // Importing makes this workspace the instance's owner (recorded in the audit log).
        let entry = match ctx.registry.adopt(&id) {
            Ok(Some(e)) if e.status == Status::Allocated => e,
            Ok(Some(_)) => {
                diagnostics::error(diags, &context, &crate::registry::RegistryError::NotAllocated { name: id });
                return None;
            }
            Ok(None) => {
                diagnostics::error(diags, &context, &crate::registry::RegistryError::NotFound { name: id });
                return None;
            }
            Err(e) => {
                diagnostics::error(diags, &context, &e);
                return None;
            }
        };
        let Some(kind) = BackendKind::parse(&entry.backend) else {
            diagnostics::error(diags, &context, &Message {
                summary: "Unknown backend in the registry".into(),
                detail: format!("The registry entry names backend {:?}, which this provider does not know.", entry.backend),
                attribute: None,
            });
            return None;
        };
        let lab = entry.lab.clone().unwrap_or_default();
        let s = &lab.settings;
        let mut state = InstanceState {
            name: val(id.clone()),
            backend: val(kind.as_str().into()),
            control_planes: val(Number::from(i64::from(lab.control_planes.max(1)))),
            workers: val(Number::from(i64::from(lab.workers))),
            pods_per_node: match kind {
                BackendKind::Netns => val(Number::from(i64::from(backend::pods::pods_per_node_of(s)))),
                BackendKind::Vagrant => Value::Null,
            },
            ..Default::default()
        };
        if kind == BackendKind::Vagrant {
            state.box_name = s.get("box").cloned().map(val).unwrap_or(Value::Null);
            state.box_version = s.get("box_version").cloned().map(val).unwrap_or(Value::Null);
            let number = |key: &str| s.get(key).and_then(|v| v.parse::<i64>().ok()).map(|n| val(Number::from(n))).unwrap_or(Value::Null);
            state.cpus = number("cpus");
            state.memory_mb = number("memory_mb");
            state.kubernetes_version = s.get("kubernetes_version").cloned().map(val).unwrap_or(Value::Null);
            state.provision = s.get("provision").and_then(|v| v.parse().ok()).map(val).unwrap_or(Value::Null);
            let opts = backend::vagrant::options_from_settings(s);
            state.cilium_version = val(opts.cilium_version.clone());
            let m = opts.mirrors;
            state.kubernetes_package_mirror = m.kubernetes_packages.map(val).unwrap_or(Value::Null);
            state.apt_proxy = m.apt_proxy.map(val).unwrap_or(Value::Null);
            state.image_registry_mirror = m.images.map(val).unwrap_or(Value::Null);
            state.cilium_cli_mirror = m.cilium_cli.map(val).unwrap_or(Value::Null);
        }
        let d = desired(ctx.choices.default_backend, diags, &state)?;
        fill(&mut state, &ctx.settings.home, &d, &entry.allocation);
        state.created_at = val(crate::registry::rfc3339(entry.created_at));
        state.host = host_of(&entry);
        state.federated_with = Value::Null;
        state.state = val("running".into());
        state.kubeconfig = kubeconfig_value(&state);
        Some((state, Value::Null))
    }
}
