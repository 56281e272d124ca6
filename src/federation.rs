//! Federation of exactly two instances, the one audited exception to isolation: forwarding
//! between their two subnets on the lab's host (for this pair only), a route to the peer's
//! subnet in every node, and a NetworkPolicy admitting the peer in each cluster. Opening,
//! checking and closing are idempotent, so a repair is simply opening again.
//!
//! The registry tag and the audit events are the resource's job (one registry change each);
//! this module only touches the host, the guests and the clusters.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::backend::{self, Backend, BackendError, BackendKind, BackendSet, LabSpec, OpControl};
use crate::hostnet::{HostNetError, Link};
use crate::k8s::{K8sError, Policies, PolicySpec};
use crate::net;
use crate::registry::{Entry, RegistryError};

/// Why a federation step failed.
#[derive(Debug, Error)]
pub enum FederationError {
    /// A backend step (host interface, guest route) failed.
    #[error("{what}: {source}")]
    Backend {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: BackendError,
    },
    /// A host forwarding step failed.
    #[error("{what}: {source}")]
    HostNet {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: HostNetError,
    },
    /// A Kubernetes step failed.
    #[error("{what}: {source}")]
    K8s {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: K8sError,
    },
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The two instances cannot be federated (other host, not created, same name).
    #[error("{0}")]
    Invalid(String),
}

/// One side of a pair.
pub struct Side {
    /// Its registry entry (allocated).
    pub entry: Entry,
    /// Its lab as built.
    pub spec: LabSpec,
    /// The backend that runs it.
    pub backend: Arc<dyn Backend>,
    /// Its backend kind.
    pub kind: BackendKind,
    /// Where its kubeconfig is, when it has a cluster (vagrant with provisioning).
    pub kubeconfig: Option<PathBuf>,
}

impl Side {
    /// Instance name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Build a side from a registry entry. `home` is the registry folder (kubeconfigs live
    /// under `<home>/instances/<name>/`).
    pub fn from_entry(entry: Entry, backends: &dyn BackendSet, home: &std::path::Path) -> Result<Side, FederationError> {
        let kind = BackendKind::parse(&entry.backend)
            .ok_or_else(|| FederationError::Invalid(format!("instance `{}` has unknown backend {:?}", entry.name, entry.backend)))?;
        let lab = entry.lab.clone().ok_or_else(|| {
            FederationError::Invalid(format!("instance `{}` is reserved but not created yet: apply it first", entry.name))
        })?;
        let s = &lab.settings;
        let vagrant = (kind == BackendKind::Vagrant).then(|| backend::vagrant::options_from_settings(s));
        let a = entry.allocation;
        let nodes = backend::plan_nodes(&entry.name, &a.subnet, lab.control_planes.max(1), lab.workers)
            .ok_or_else(|| FederationError::Invalid(format!("instance `{}`: its subnet cannot hold its nodes", entry.name)))?;
        let kubeconfig = vagrant
            .as_ref()
            .filter(|v| v.provision)
            .map(|_| home.join("instances").join(&entry.name).join("kubeconfig"));
        let spec = LabSpec {
            instance: entry.name.clone(),
            subnet: a.subnet,
            gateway: net::gateway(&a.subnet),
            pod_cidr: a.pod_cidr,
            service_cidr: a.service_cidr,
            mgmt_cidr: a.mgmt_cidr,
            nodes,
            vagrant,
        };
        let backend = backends.backend(kind, &lab.settings);
        Ok(Side {
            entry,
            spec,
            backend,
            kind,
            kubeconfig,
        })
    }
}

/// What opening a pair put in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// One line per forwarding rule, setting or guest route.
    pub routes: Vec<String>,
    /// `<instance>/<namespace>/<name>` per NetworkPolicy.
    pub policies: Vec<String>,
}

/// Two sides, names sorted.
pub struct Pair {
    /// The side whose name sorts first.
    pub a: Side,
    /// The other side.
    pub b: Side,
}

/// The route lines of `me`'s nodes towards `peer`.
fn guest_route_lines(me: &Side, peer: &Side) -> Vec<String> {
    me.spec
        .nodes
        .iter()
        .map(|n| format!("{}: route {} via {}", n.name, peer.spec.subnet, me.spec.gateway))
        .collect()
}

/// `<instance>/<namespace>/<policy>` of the NetworkPolicy in `me`'s cluster admitting `peer`.
fn policy_line(me: &Side, peer: &Side, namespace: &str) -> String {
    format!("{}/{namespace}/{}", me.name(), crate::k8s::policy_name(peer.name()))
}

/// The id of a pair: names sorted, joined by `+`.
pub fn pair_id(x: &str, y: &str) -> String {
    if x <= y {
        format!("{x}+{y}")
    } else {
        format!("{y}+{x}")
    }
}

impl Pair {
    /// A pair from two sides (in any order). Refuses a side paired with itself and sides that
    /// do not share a host (different backends or lab hosts).
    pub fn new(x: Side, y: Side) -> Result<Pair, FederationError> {
        if x.name() == y.name() {
            return Err(FederationError::Invalid(format!("an instance cannot be federated with itself (`{}`)", x.name())));
        }
        let (a, b) = if x.name() < y.name() { (x, y) } else { (y, x) };
        let host_of = |s: &Side| {
            let l = s.entry.lab.as_ref().map(|l| l.settings.clone()).unwrap_or_default();
            (s.kind, l.get("netns_host").cloned(), l.get("hypervisor").cloned())
        };
        if host_of(&a) != host_of(&b) {
            return Err(FederationError::Invalid(format!(
                "`{}` ({}) and `{}` ({}) do not share a lab host: only instances of the same backend on the same host can be federated",
                a.name(),
                describe_host(&a),
                b.name(),
                describe_host(&b)
            )));
        }
        Ok(Pair { a, b })
    }

    /// `<a>+<b>`.
    pub fn id(&self) -> String {
        pair_id(self.a.name(), self.b.name())
    }

    /// What becomes reachable, in words, for the plan-time warning and the audit event.
    pub fn reachability(&self) -> Vec<String> {
        let (a, b) = (&self.a.entry, &self.b.entry);
        // Subnets only: pod CIDRs are not routed between instances.
        vec![
            format!("{} (subnet {}) -> {} (subnet {})", a.name, a.allocation.subnet, b.name, b.allocation.subnet),
            format!("{} (subnet {}) -> {} (subnet {})", b.name, b.allocation.subnet, a.name, a.allocation.subnet),
        ]
    }

    async fn links(&self) -> Result<(Link, Link), FederationError> {
        Ok((link_of(&self.a).await?, link_of(&self.b).await?))
    }

    /// Check, without changing anything, that the host side can be written here.
    pub async fn preflight(&self) -> Result<(), FederationError> {
        self.a.backend.forwarding().preflight().await.map_err(|source| FederationError::HostNet {
            what: format!("federating {}", self.id()),
            source,
        })
    }

    fn sides(&self) -> [(&Side, &Side); 2] {
        [(&self.a, &self.b), (&self.b, &self.a)]
    }

    async fn policies_of(side: &Side) -> Result<Option<Policies>, FederationError> {
        let Some(path) = &side.kubeconfig else { return Ok(None) };
        Policies::from_kubeconfig(path).await.map(Some).map_err(|source| FederationError::K8s {
            what: format!("connecting to the cluster of `{}`", side.name()),
            source,
        })
    }

    /// Put every piece in place (idempotent). On failure, returns what was put in place so far
    /// with the error, so state can record it and destroy can undo it.
    pub async fn open(&self, namespaces: &[String], ctl: &OpControl) -> Result<Opened, (Opened, FederationError)> {
        let mut done = Opened::default();
        let (la, lb) = match self.links().await {
            Ok(l) => l,
            Err(e) => return Err((done, e)),
        };
        match self.a.backend.forwarding().allow_pair(&la, &lb).await {
            Ok(lines) => done.routes.extend(lines),
            Err(source) => {
                return Err((done, FederationError::HostNet { what: format!("opening forwarding for {}", self.id()), source }))
            }
        }
        for (me, peer) in self.sides() {
            if let Err(source) = me.backend.set_guest_route(&me.spec, peer.spec.subnet, true, ctl).await {
                return Err((done, FederationError::Backend { what: format!("adding routes in `{}`", me.name()), source }));
            }
            done.routes.extend(guest_route_lines(me, peer));
        }
        for (me, peer) in self.sides() {
            let policies = match Self::policies_of(me).await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => return Err((done, e)),
            };
            for ns in namespaces {
                let spec = PolicySpec {
                    instance: me.name().to_string(),
                    peer: peer.name().to_string(),
                    namespace: ns.clone(),
                    peer_pod_cidr: peer.spec.pod_cidr,
                    peer_subnet: peer.spec.subnet,
                    own_pod_cidr: me.spec.pod_cidr,
                    own_subnet: me.spec.subnet,
                };
                if let Err(source) = policies.apply(&spec).await {
                    return Err((done, FederationError::K8s { what: format!("applying the NetworkPolicy in `{}`", me.name()), source }));
                }
                done.policies.push(policy_line(me, peer, ns));
            }
        }
        Ok(done)
    }

    /// What an open pair has in place, in the words [`Pair::open`] reports it (read-only: for
    /// import, whose state must be what a create would have recorded).
    pub async fn opened(&self, namespaces: &[String]) -> Result<Opened, FederationError> {
        let (la, lb) = self.links().await?;
        let mut done = Opened {
            routes: self.a.backend.forwarding().describe_pair(&la, &lb),
            policies: Vec::new(),
        };
        for (me, peer) in self.sides() {
            done.routes.extend(guest_route_lines(me, peer));
        }
        for (me, peer) in self.sides() {
            if me.kubeconfig.is_some() {
                done.policies.extend(namespaces.iter().map(|ns| policy_line(me, peer, ns)));
            }
        }
        Ok(done)
    }

    /// What is missing of an opened pair (empty: all there).
    pub async fn missing(&self, namespaces: &[String]) -> Result<Vec<String>, FederationError> {
        let mut missing = Vec::new();
        match self.links().await {
            Ok((la, lb)) => {
                let m = self.a.backend.forwarding().missing_for_pair(&la, &lb).await.map_err(|source| FederationError::HostNet {
                    what: format!("reading forwarding of {}", self.id()),
                    source,
                })?;
                missing.extend(m);
            }
            Err(e) => missing.push(e.to_string()),
        }
        for (me, peer) in self.sides() {
            let present = me.backend.guest_routes(&me.spec).await.map_err(|source| FederationError::Backend {
                what: format!("reading routes of `{}`", me.name()),
                source,
            })?;
            for n in &me.spec.nodes {
                if !present.iter().any(|(node, dest)| node == &n.name && *dest == peer.spec.subnet) {
                    missing.push(format!("{}: route to {}", n.name, peer.spec.subnet));
                }
            }
        }
        for (me, peer) in self.sides() {
            let Some(p) = Self::policies_of(me).await? else { continue };
            for ns in namespaces {
                let name = crate::k8s::policy_name(peer.name());
                let there = p.exists(ns, &name).await.map_err(|source| FederationError::K8s {
                    what: format!("reading NetworkPolicies of `{}`", me.name()),
                    source,
                })?;
                if !there {
                    missing.push(format!("{}/{ns}/{name}", me.name()));
                }
            }
        }
        Ok(missing)
    }

    /// Delete the pair's NetworkPolicies in `namespaces` (idempotent).
    pub async fn close_policies(&self, namespaces: &[String]) -> Result<(), FederationError> {
        for (me, peer) in self.sides() {
            let p = match Self::policies_of(me).await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                // A cluster whose kubeconfig is gone has no policy left to remove.
                Err(_) if me.kubeconfig.as_ref().is_some_and(|k| !k.exists()) => continue,
                Err(e) => return Err(e),
            };
            for ns in namespaces {
                p.delete(ns, &crate::k8s::policy_name(peer.name())).await.map_err(|source| FederationError::K8s {
                    what: format!("deleting the NetworkPolicy in `{}`", me.name()),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Take every piece away (idempotent; pieces already gone are fine).
    pub async fn close(&self, namespaces: &[String], ctl: &OpControl) -> Result<(), FederationError> {
        self.close_policies(namespaces).await?;
        for (me, peer) in self.sides() {
            me.backend.set_guest_route(&me.spec, peer.spec.subnet, false, ctl).await.map_err(|source| FederationError::Backend {
                what: format!("removing routes in `{}`", me.name()),
                source,
            })?;
        }
        // Interfaces may be gone already; deny_pair finds rules by the pair's comment.
        let la = Link { instance: self.a.name().into(), iface: backend_iface(&self.a).await, subnet: self.a.spec.subnet };
        let lb = Link { instance: self.b.name().into(), iface: backend_iface(&self.b).await, subnet: self.b.spec.subnet };
        self.a.backend.forwarding().deny_pair(&la, &lb).await.map_err(|source| FederationError::HostNet {
            what: format!("closing forwarding for {}", self.id()),
            source,
        })
    }
}

async fn link_of(s: &Side) -> Result<Link, FederationError> {
    let iface = s.backend.host_interface(&s.spec).await.map_err(|source| FederationError::Backend {
        what: format!("finding the host interface of `{}`", s.name()),
        source,
    })?;
    Ok(Link {
        instance: s.name().to_string(),
        iface,
        subnet: s.spec.subnet,
    })
}

async fn backend_iface(s: &Side) -> String {
    s.backend.host_interface(&s.spec).await.unwrap_or_default()
}

fn describe_host(s: &Side) -> String {
    let l = s.entry.lab.as_ref().map(|l| l.settings.clone()).unwrap_or_default();
    match s.kind {
        BackendKind::Netns => format!("netns host {}", l.get("netns_host").cloned().unwrap_or_default()),
        BackendKind::Vagrant => format!("vagrant on {}", l.get("hypervisor").cloned().unwrap_or_default()),
    }
}
