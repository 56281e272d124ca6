//! The pure mapping between `homelab_instance`'s Terraform state and the domain: the shape a
//! configuration asks for ([`Desired`]) with its defaults and the checks that need no provider,
//! the lab spec the backend builds, the computed attributes that follow from the shape and the
//! allocation, and the words for a lab's state. No I/O: unit tests below cover it, the
//! acceptance tests the rest.

use std::path::Path;
use std::time::Duration;

use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::backend::{self, BackendKind, LabSpec, LabStatus, OpControl, VagrantOptions, MAX_CONTROL_PLANES, MAX_WORKERS};
use crate::diagnostics::{self, attribute_error};
use crate::net;
use crate::registry::Allocation;
use crate::schema::{known, val, Number};
use crate::settings;

use super::state::{InstanceState, NodeState};

pub(super) const VAGRANT_ONLY: [&str; 11] = [
    "box",
    "box_version",
    "cpus",
    "memory_mb",
    "kubernetes_version",
    "provision",
    "cilium_version",
    "kubernetes_package_mirror",
    "apt_proxy",
    "image_registry_mirror",
    "cilium_cli_mirror",
];

/// Default control planes.
pub const DEFAULT_CONTROL_PLANES: i64 = 1;

/// Default workers.
pub const DEFAULT_WORKERS: i64 = 2;

pub(super) fn default_timeout(kind: BackendKind, op: &str) -> Duration {
    match (kind, op) {
        (BackendKind::Netns, _) => Duration::from_secs(300),
        (BackendKind::Vagrant, "delete") => Duration::from_secs(15 * 60),
        (BackendKind::Vagrant, _) => Duration::from_secs(30 * 60),
    }
}

/// What the configuration asks for, with defaults applied.
#[derive(Debug, Clone)]
pub(super) struct Desired {
    pub(super) name: String,
    pub(super) kind: BackendKind,
    pub(super) control_planes: u32,
    pub(super) workers: u32,
    /// Pods per node (0 for vagrant, which ignores it).
    pub(super) pods_per_node: u32,
    pub(super) vagrant: Option<VagrantOptions>,
}

/// The whole value of a number attribute (validation refuses the others).
pub(super) fn whole(v: &Value<Number>) -> Option<i64> {
    known(v).and_then(|n| n.whole())
}

/// A number attribute's value as a count, when it is one that fits (validation refuses the
/// others).
pub(super) fn count(v: &Value<Number>) -> Option<u32> {
    whole(v).and_then(|n| u32::try_from(n).ok())
}

pub(super) fn vagrant_options(s: &InstanceState) -> VagrantOptions {
    let mut mirrors = backend::Mirrors::default();
    for (attr, v) in [
        ("kubernetes_package_mirror", &s.kubernetes_package_mirror),
        ("apt_proxy", &s.apt_proxy),
        ("image_registry_mirror", &s.image_registry_mirror),
        ("cilium_cli_mirror", &s.cilium_cli_mirror),
    ] {
        if let Some(slot) = mirrors.by_attribute_mut(attr) {
            *slot = known(v);
        }
    }
    VagrantOptions {
        r#box: known(&s.box_name).unwrap_or_else(|| backend::vagrant::DEFAULT_BOX.to_string()),
        box_version: known(&s.box_version),
        cpus: count(&s.cpus).unwrap_or(backend::vagrant::DEFAULT_CPUS),
        memory_mb: count(&s.memory_mb).unwrap_or(backend::vagrant::DEFAULT_MEMORY_MB),
        kubernetes_version: known(&s.kubernetes_version)
            .unwrap_or_else(|| backend::vagrant::DEFAULT_KUBERNETES_VERSION.to_string()),
        provision: known(&s.provision).unwrap_or(true),
        cilium_version: known(&s.cilium_version)
            .unwrap_or_else(|| backend::vagrant::DEFAULT_CILIUM_VERSION.to_string()),
        mirrors,
    }
}

/// Checks that need no provider configuration (values may be unknown).
pub(super) fn validate_config(diags: &mut Diagnostics, c: &InstanceState) {
    if let Value::Value(name) = &c.name {
        if let Err(e) = crate::registry::validate_name(name) {
            diagnostics::error(diags, "", &e);
        }
    }
    if let Value::Value(b) = &c.backend {
        if BackendKind::parse(b).is_none() {
            attribute_error(diags, "backend", "Invalid backend".into(), format!("{b:?} is not `netns` or `vagrant`"));
        }
    }
    for (attr, v, lo, hi, what) in [
        ("control_planes", &c.control_planes, 1, i64::from(MAX_CONTROL_PLANES), "control-plane nodes"),
        ("workers", &c.workers, 0, i64::from(MAX_WORKERS), "worker nodes"),
        ("pods_per_node", &c.pods_per_node, 0, i64::from(backend::pods::MAX_PODS_PER_NODE), "pods per node"),
        ("cpus", &c.cpus, 1, 1 << 10, "vCPUs per VM"),
        ("memory_mb", &c.memory_mb, 256, 1 << 20, "MiB of memory per VM"),
    ] {
        match v {
            Value::Value(Number::Whole(n)) if !(lo..=hi).contains(n) => {
                attribute_error(diags, attr, format!("Invalid {attr}"), format!("{attr} = {n} is out of range: it counts {what}, from {lo} to {hi}."));
            }
            Value::Value(Number::Other(x)) => {
                attribute_error(diags, attr, format!("Invalid {attr}"), format!("{attr} = {x} is not a whole number: it counts {what}, from {lo} to {hi}."));
            }
            _ => {}
        }
    }
    for (attr, v) in [("subnet", &c.subnet), ("pod_cidr", &c.pod_cidr), ("service_cidr", &c.service_cidr)] {
        if let Value::Value(text) = v {
            if let Err(e) = settings::cidr_setting(attr, text) {
                attribute_error(diags, attr, format!("Invalid {attr}"), e.message);
            }
        }
    }
    if let Value::Value(k) = &c.kubernetes_version {
        let ok = {
            let parts: Vec<&str> = k.split('.').collect();
            (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_digit()))
        };
        if !ok {
            attribute_error(diags, "kubernetes_version", "Invalid kubernetes_version".into(), format!("{k:?} is not a version such as `1.33` or `1.33.2`"));
        }
    }
    if let Value::Value(t) = &c.timeouts {
        for (attr, v) in [("create", &t.create), ("update", &t.update), ("delete", &t.delete)] {
            if let Value::Value(text) = v {
                if let Err(e) = settings::parse_bounded_duration(text, settings::MAX_TIMEOUT) {
                    diags.error(
                        format!("Invalid timeouts.{attr}"),
                        format!("{e}. A timeout is a duration such as `10m` or `1h30m`, from 1ms to 24h."),
                        AttributePath::new("timeouts").index(0).attribute(attr),
                    );
                }
            }
        }
    }
}

pub(super) fn vagrant_only_set(c: &InstanceState) -> Vec<&'static str> {
    let mut set = Vec::new();
    if !c.box_name.is_null() {
        set.push("box");
    }
    if !c.box_version.is_null() {
        set.push("box_version");
    }
    if !c.cpus.is_null() {
        set.push("cpus");
    }
    if !c.memory_mb.is_null() {
        set.push("memory_mb");
    }
    if !c.kubernetes_version.is_null() {
        set.push("kubernetes_version");
    }
    if !c.provision.is_null() {
        set.push("provision");
    }
    for (attr, v) in [
        ("cilium_version", &c.cilium_version),
        ("kubernetes_package_mirror", &c.kubernetes_package_mirror),
        ("apt_proxy", &c.apt_proxy),
        ("image_registry_mirror", &c.image_registry_mirror),
        ("cilium_cli_mirror", &c.cilium_cli_mirror),
    ] {
        if !v.is_null() {
            set.push(attr);
        }
    }
    set
}

/// The shape `config` asks for; instances that set no `backend` get `default_backend`. Vagrant-
/// or netns-only attributes set for the other backend are errors on those attributes.
pub(super) fn desired(default_backend: BackendKind, diags: &mut Diagnostics, config: &InstanceState) -> Option<Desired> {
    let name = known(&config.name)?;
    let kind = match &config.backend {
        Value::Value(b) => BackendKind::parse(b)?,
        _ => default_backend,
    };
    if kind == BackendKind::Netns {
        for attr in vagrant_only_set(config) {
            attribute_error(
                diags,
                attr,
                format!("`{attr}` is only for the vagrant backend"),
                format!("Instance {name:?} uses the netns backend, which has no VMs: remove `{attr}` or set `backend = \"vagrant\"`. (Vagrant-only attributes: {}.)", VAGRANT_ONLY.join(", ")),
            );
        }
    }
    if kind == BackendKind::Vagrant && !config.pods_per_node.is_null() {
        attribute_error(
            diags,
            "pods_per_node",
            "`pods_per_node` is only for the netns backend".into(),
            format!("Instance {name:?} uses the vagrant backend, whose cluster runs real pods: remove `pods_per_node` or set `backend = \"netns\"`."),
        );
    }
    Some(Desired {
        name,
        kind,
        control_planes: count(&config.control_planes).unwrap_or(DEFAULT_CONTROL_PLANES as u32),
        workers: count(&config.workers).unwrap_or(DEFAULT_WORKERS as u32),
        pods_per_node: match kind {
            BackendKind::Netns => count(&config.pods_per_node).unwrap_or(backend::pods::DEFAULT_PODS_PER_NODE),
            BackendKind::Vagrant => 0,
        },
        vagrant: (kind == BackendKind::Vagrant).then(|| vagrant_options(config)),
    })
}

pub(super) fn timeout(state: &InstanceState, kind: BackendKind, op: &str) -> Duration {
    let t = known(&state.timeouts).unwrap_or_default();
    let v = match op {
        "create" => &t.create,
        "update" => &t.update,
        _ => &t.delete,
    };
    known(v)
        .and_then(|s| settings::parse_bounded_duration(&s, settings::MAX_TIMEOUT).ok())
        .unwrap_or_else(|| default_timeout(kind, op))
}

pub(super) fn op_control(state: &InstanceState, kind: BackendKind, op: &str) -> OpControl {
    OpControl {
        timeout: timeout(state, kind, op),
        cancel: tf_provider::stop_token(),
    }
}

pub(super) fn lab_spec(d: &Desired, a: &Allocation) -> Option<LabSpec> {
    Some(LabSpec {
        instance: d.name.clone(),
        subnet: a.subnet,
        gateway: net::gateway(&a.subnet),
        pod_cidr: a.pod_cidr,
        service_cidr: a.service_cidr,
        mgmt_cidr: a.mgmt_cidr,
        nodes: backend::plan_nodes(&d.name, &a.subnet, d.control_planes, d.workers)?,
        pods_per_node: d.pods_per_node,
        vagrant: d.vagrant.clone(),
    })
}

/// On netns, the pod CIDR must hold every node's slice (an error on `pod_cidr` otherwise).
pub(super) fn pods_fit(diags: &mut Diagnostics, d: &Desired, a: &Allocation) -> bool {
    if d.kind != BackendKind::Netns {
        return true;
    }
    match backend::pods::plan(&d.name, &a.pod_cidr, &[], d.pods_per_node) {
        Ok(_) => true,
        Err(e) => {
            attribute_error(diags, "pod_cidr", "Pod CIDR too small for the netns pods".into(), format!("{e}. Choose a wider `pod_cidr`, or leave it to the pool."));
            false
        }
    }
}

pub(super) fn allocation_of(state: &InstanceState) -> Option<Allocation> {
    let p = |v: &Value<String>| known(v).and_then(|t| net::parse_canonical(&t).ok());
    Some(Allocation {
        subnet: p(&state.subnet)?,
        pod_cidr: p(&state.pod_cidr)?,
        service_cidr: p(&state.service_cidr)?,
        mgmt_cidr: p(&state.mgmt_cidr),
    })
}

/// Whether the kubeconfig's content belongs in the state (`kubeconfig_in_state`, default true).
pub(super) fn kubeconfig_in_state(state: &InstanceState) -> bool {
    known(&state.kubeconfig_in_state) != Some(false)
}

/// `running`, or what is wrong in words.
pub(super) fn describe(status: &LabStatus) -> String {
    if status.healthy() {
        return "running".into();
    }
    if !status.exists {
        return "absent".into();
    }
    let mut what: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| !n.healthy)
        .map(|n| format!("{}: {}", n.name, n.state))
        .collect();
    what.extend(status.extra_nodes.iter().map(|n| format!("{n}: not in the configuration")));
    what.extend(status.problems.iter().cloned());
    // A whole lab in one state (every VM `poweroff`) reads better as that state, as
    // `vagrant status` says it.
    if status.problems.is_empty() && status.extra_nodes.is_empty() && !status.nodes.is_empty() {
        let first = &status.nodes[0].state;
        if status.nodes.iter().all(|n| !n.healthy && &n.state == first) && !first.contains(' ') {
            return first.clone();
        }
    }
    format!("degraded ({})", what.join("; "))
}

/// Fill every computed attribute that follows from the desired shape and the allocation.
pub(super) fn fill(state: &mut InstanceState, home: &Path, d: &Desired, a: &Allocation) {
    state.id = val(d.name.clone());
    state.name = val(d.name.clone());
    state.backend = val(d.kind.as_str().to_string());
    state.control_planes = val(Number::from(i64::from(d.control_planes)));
    state.workers = val(Number::from(i64::from(d.workers)));
    state.pods_per_node = match d.kind {
        BackendKind::Netns => val(Number::from(i64::from(d.pods_per_node))),
        BackendKind::Vagrant => Value::Null,
    };
    state.subnet = val(a.subnet.to_string());
    state.pod_cidr = val(a.pod_cidr.to_string());
    state.service_cidr = val(a.service_cidr.to_string());
    state.mgmt_cidr = a.mgmt_cidr.map(|m| val(m.to_string())).unwrap_or(Value::Null);
    state.gateway = val(net::gateway(&a.subnet).to_string());
    let nodes = backend::plan_nodes(&d.name, &a.subnet, d.control_planes, d.workers).unwrap_or_default();
    let pods = match d.kind {
        BackendKind::Netns => backend::pods::plan(&d.name, &a.pod_cidr, &nodes, d.pods_per_node).ok(),
        BackendKind::Vagrant => None,
    };
    state.nodes = val(
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let np = pods.as_ref().and_then(|p| p.get(i));
                NodeState {
                    name: val(n.name),
                    role: val(n.role.as_str().to_string()),
                    ip: val(n.ip.to_string()),
                    pod_cidr: np.map(|p| val(p.slice.to_string())).unwrap_or(Value::Null),
                    pods: val(np.map(|p| p.pods.iter().map(|ip| ip.to_string()).collect()).unwrap_or_default()),
                }
            })
            .collect(),
    );
    match &d.vagrant {
        Some(v) => {
            let dir = home.join("instances").join(&d.name);
            state.box_name = val(v.r#box.clone());
            state.box_version = v.box_version.clone().map(val).unwrap_or(Value::Null);
            state.cpus = val(Number::from(i64::from(v.cpus)));
            state.memory_mb = val(Number::from(i64::from(v.memory_mb)));
            state.kubernetes_version = val(v.kubernetes_version.clone());
            state.provision = val(v.provision);
            state.cilium_version = val(v.cilium_version.clone());
            let m = &v.mirrors;
            state.kubernetes_package_mirror = m.kubernetes_packages.clone().map(val).unwrap_or(Value::Null);
            state.apt_proxy = m.apt_proxy.clone().map(val).unwrap_or(Value::Null);
            state.image_registry_mirror = m.images.clone().map(val).unwrap_or(Value::Null);
            state.cilium_cli_mirror = m.cilium_cli.clone().map(val).unwrap_or(Value::Null);
            state.vagrantfile_path = val(dir.join("Vagrantfile").display().to_string());
            if v.provision {
                state.kubeconfig_path = val(dir.join("kubeconfig").display().to_string());
                // The first control plane, or the virtual IP of several.
                let api = backend::plan_nodes(&d.name, &a.subnet, d.control_planes, d.workers)
                    .and_then(|nodes| backend::api_address(&a.subnet, &nodes))
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                state.api_endpoint = val(format!("https://{api}:6443"));
            } else {
                state.kubeconfig_path = Value::Null;
                state.api_endpoint = Value::Null;
                state.kubeconfig = Value::Null;
            }
            state.dir = val(dir.display().to_string());
        }
        None => {
            state.box_name = Value::Null;
            state.box_version = Value::Null;
            state.cpus = Value::Null;
            state.memory_mb = Value::Null;
            state.kubernetes_version = Value::Null;
            state.provision = Value::Null;
            state.cilium_version = Value::Null;
            state.kubernetes_package_mirror = Value::Null;
            state.apt_proxy = Value::Null;
            state.image_registry_mirror = Value::Null;
            state.cilium_cli_mirror = Value::Null;
            state.dir = Value::Null;
            state.vagrantfile_path = Value::Null;
            state.kubeconfig_path = Value::Null;
            state.kubeconfig = Value::Null;
            state.api_endpoint = Value::Null;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NodeStatus;

    fn config(name: &str) -> InstanceState {
        InstanceState { name: val(name.into()), ..Default::default() }
    }

    fn allocation() -> Allocation {
        Allocation {
            subnet: "192.168.56.0/24".parse().unwrap(),
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            mgmt_cidr: None,
        }
    }

    fn attrs(d: &Diagnostics) -> Vec<AttributePath> {
        d.errors.iter().map(|e| e.attribute.clone()).collect()
    }

    #[test]
    fn a_bare_config_gets_the_defaults_of_its_backend() {
        let mut diags = Diagnostics::default();
        let d = desired(BackendKind::Netns, &mut diags, &config("acme")).unwrap();
        assert!(diags.errors.is_empty());
        assert_eq!((d.kind, d.control_planes, d.workers), (BackendKind::Netns, 1, 2));
        assert_eq!(d.pods_per_node, backend::pods::DEFAULT_PODS_PER_NODE);
        assert!(d.vagrant.is_none());
        let d = desired(BackendKind::Vagrant, &mut diags, &config("acme")).unwrap();
        assert_eq!(d.pods_per_node, 0);
        assert_eq!(d.vagrant, Some(backend::vagrant::default_options()));
        // An explicit backend wins over the provider's default.
        let mut c = config("acme");
        c.backend = val("netns".into());
        assert_eq!(desired(BackendKind::Vagrant, &mut diags, &c).unwrap().kind, BackendKind::Netns);
        // No name yet (unknown at plan): nothing to map.
        assert!(desired(BackendKind::Netns, &mut diags, &InstanceState::default()).is_none());
    }

    #[test]
    fn attributes_of_the_other_backend_are_errors_on_those_attributes() {
        let mut c = config("acme");
        c.backend = val("netns".into());
        c.cpus = val(Number::from(4));
        c.image_registry_mirror = val("https://registry.lab".into());
        let mut diags = Diagnostics::default();
        desired(BackendKind::Vagrant, &mut diags, &c).unwrap();
        assert_eq!(attrs(&diags), [AttributePath::new("cpus"), AttributePath::new("image_registry_mirror")]);
        assert!(diags.errors[0].detail.contains("netns backend"), "{}", diags.errors[0].detail);

        let mut c = config("acme");
        c.backend = val("vagrant".into());
        c.pods_per_node = val(Number::from(2));
        let mut diags = Diagnostics::default();
        desired(BackendKind::Netns, &mut diags, &c).unwrap();
        assert_eq!(attrs(&diags), [AttributePath::new("pods_per_node")]);
    }

    #[test]
    fn checks_without_a_provider_name_the_attribute_at_fault() {
        let mut c = config("acme");
        c.workers = val(Number::from(11));
        c.control_planes = val(Number::from(0));
        c.kubernetes_version = val("v1.33".into());
        c.subnet = val("10.0.0.1/24".into());
        let mut diags = Diagnostics::default();
        validate_config(&mut diags, &c);
        let mut got = attrs(&diags);
        got.sort_by_key(|a| format!("{a:?}"));
        let mut want = vec![
            AttributePath::new("control_planes"),
            AttributePath::new("workers"),
            AttributePath::new("subnet"),
            AttributePath::new("kubernetes_version"),
        ];
        want.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(got, want, "{:?}", diags.errors);
        let mut diags = Diagnostics::default();
        validate_config(&mut diags, &config("Acme"));
        assert_eq!(diags.errors.len(), 1, "an invalid name is refused");
        let mut diags = Diagnostics::default();
        validate_config(&mut diags, &config("acme"));
        assert!(diags.errors.is_empty());
    }

    #[test]
    fn mirrors_and_versions_reach_the_vagrant_options() {
        let mut c = config("acme");
        c.kubernetes_version = val("1.33.2".into());
        c.cilium_version = val("1.16.9".into());
        c.apt_proxy = val("http://apt.lab:3142".into());
        c.cilium_cli_mirror = val("http://mirror.lab/cilium".into());
        let o = vagrant_options(&c);
        assert_eq!((o.kubernetes_version.as_str(), o.cilium_version.as_str()), ("1.33.2", "1.16.9"));
        assert_eq!(o.mirrors.apt_proxy.as_deref(), Some("http://apt.lab:3142"));
        assert_eq!(o.mirrors.cilium_cli.as_deref(), Some("http://mirror.lab/cilium"));
        assert_eq!((o.mirrors.images.as_ref(), o.mirrors.kubernetes_packages.as_ref()), (None, None));
    }

    #[test]
    fn the_computed_attributes_follow_from_the_shape_and_the_allocation() {
        let mut diags = Diagnostics::default();
        let mut c = config("acme");
        c.control_planes = val(Number::from(3));
        c.workers = val(Number::from(1));
        let d = desired(BackendKind::Vagrant, &mut diags, &c).unwrap();
        let a = allocation();
        let mut s = c.clone();
        fill(&mut s, Path::new("/home/lab"), &d, &a);
        assert_eq!(s.gateway, val("192.168.56.1".to_string()));
        let nodes = known(&s.nodes).unwrap();
        let names: Vec<String> = nodes.iter().map(|n| known(&n.name).unwrap()).collect();
        assert_eq!(names, ["acme-cp-1", "acme-cp-2", "acme-cp-3", "acme-worker-1"]);
        assert_eq!(known(&nodes[3].ip).unwrap(), "192.168.56.20");
        // Several control planes: the API is the virtual IP.
        assert_eq!(s.api_endpoint, val("https://192.168.56.5:6443".to_string()));
        assert_eq!(s.dir, val("/home/lab/instances/acme".to_string()));
        assert_eq!(s.cilium_version, val(backend::vagrant::DEFAULT_CILIUM_VERSION.to_string()));
        // The allocation reads back from the state it filled, and the lab spec matches it.
        assert_eq!(allocation_of(&s), Some(a));
        let spec = lab_spec(&d, &a).unwrap();
        assert_eq!((spec.nodes.len(), spec.gateway.to_string()), (4, "192.168.56.1".to_string()));

        // netns: no Vagrant attribute survives.
        let d = desired(BackendKind::Netns, &mut diags, &config("acme")).unwrap();
        let mut s = config("acme");
        s.box_name = val("stale".into());
        fill(&mut s, Path::new("/home/lab"), &d, &a);
        assert!(s.box_name.is_null() && s.api_endpoint.is_null() && s.dir.is_null() && s.cilium_version.is_null());
    }

    #[test]
    fn a_lab_state_is_said_in_the_fewest_words_that_are_true() {
        let node = |name: &str, state: &str| NodeStatus { name: name.into(), state: state.into(), healthy: state == "running" };
        let status = |nodes: Vec<NodeStatus>| LabStatus { exists: true, nodes, extra_nodes: vec![], problems: vec![] };
        assert_eq!(describe(&status(vec![node("a-cp-1", "running")])), "running");
        assert_eq!(describe(&status(vec![node("a-cp-1", "poweroff"), node("a-worker-1", "poweroff")])), "poweroff");
        assert_eq!(
            describe(&status(vec![node("a-cp-1", "running"), node("a-worker-1", "shutoff")])),
            "degraded (a-worker-1: shutoff)"
        );
        let mut s = status(vec![node("a-cp-1", "running")]);
        s.extra_nodes = vec!["a-worker-9".into()];
        assert_eq!(describe(&s), "degraded (a-worker-9: not in the configuration)");
        assert_eq!(describe(&LabStatus { exists: false, ..status(vec![]) }), "absent");
    }
}
