//! Federation of exactly two instances, the one audited exception to isolation: forwarding
//! between their two subnets on the lab's host (for this pair only), a route to the peer's
//! subnet in every node, and a NetworkPolicy admitting the peer in each cluster. Where the
//! lab's host routes pods (`netns`), their pods too: the host routes both pod CIDRs' node slices
//! via their owning nodes, forwards between the pair's subnets and pod CIDRs (every network of
//! one side to every network of the other), and every node and pod of each side routes the
//! peer's subnet and pod CIDR. Opening, checking and closing are idempotent, so a repair is
//! simply opening again.
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
            pods_per_node: match kind {
                BackendKind::Netns => backend::pods::pods_per_node_of(s),
                BackendKind::Vagrant => 0,
            },
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

/// Whether the lab's host routes `s`'s pods (then federation opens them too).
fn routes_pods(s: &Side) -> bool {
    !s.backend.pod_routes(&s.spec).is_empty()
}

/// The peer's networks that `me`'s guests get a route to: its subnet, and its pod CIDR when
/// the host routes its pods.
fn guest_dests(peer: &Side) -> Vec<net::Ipv4Net> {
    let mut d = vec![peer.spec.subnet];
    if routes_pods(peer) {
        d.push(peer.spec.pod_cidr);
    }
    d
}

/// The route lines of `me`'s nodes (and pods) towards `peer`.
fn guest_route_lines(me: &Side, peer: &Side) -> Vec<String> {
    let dests = guest_dests(peer);
    me.backend
        .guest_route_holders(&me.spec)
        .into_iter()
        .flat_map(|(holder, via)| dests.iter().map(move |d| format!("{holder}: route {d} via {via}")).collect::<Vec<_>>())
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

    /// Whether the pods of both sides are opened too (the host routes pods: `netns`).
    pub fn opens_pods(&self) -> bool {
        routes_pods(&self.a) && routes_pods(&self.b)
    }

    /// What becomes reachable, in words, for the plan-time warning and the audit event.
    pub fn reachability(&self) -> Vec<String> {
        let (a, b) = (&self.a.entry, &self.b.entry);
        let pods = self.opens_pods();
        let nets = |e: &Entry| {
            if pods {
                format!("subnet {}, pod CIDR {}", e.allocation.subnet, e.allocation.pod_cidr)
            } else {
                format!("subnet {}", e.allocation.subnet)
            }
        };
        vec![
            format!("{} ({}) -> {} ({})", a.name, nets(a), b.name, nets(b)),
            format!("{} ({}) -> {} ({})", b.name, nets(b), a.name, nets(a)),
        ]
    }

    async fn links(&self) -> Result<(Link, Link), FederationError> {
        Ok((link_of(&self.a, self.pod_cidr_of(&self.a)).await?, link_of(&self.b, self.pod_cidr_of(&self.b)).await?))
    }

    /// The pod CIDR of a side that this pair forwards (both sides' pods are routed), if any.
    fn pod_cidr_of(&self, s: &Side) -> Option<net::Ipv4Net> {
        self.opens_pods().then_some(s.spec.pod_cidr)
    }

    /// The peer's networks a side's guests route: its subnet, and its pod CIDR when this pair
    /// opens pods.
    fn dests_for(&self, peer: &Side) -> Vec<net::Ipv4Net> {
        if self.opens_pods() {
            guest_dests(peer)
        } else {
            vec![peer.spec.subnet]
        }
    }

    /// The route lines of `me`'s guests towards `peer`.
    fn guest_lines(&self, me: &Side, peer: &Side) -> Vec<String> {
        if self.opens_pods() {
            guest_route_lines(me, peer)
        } else {
            me.backend
                .guest_route_holders(&me.spec)
                .into_iter()
                .map(|(holder, via)| format!("{holder}: route {} via {via}", peer.spec.subnet))
                .collect()
        }
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
        if self.opens_pods() {
            for (me, _) in self.sides() {
                match me.backend.set_host_pod_routes(&me.spec, true, ctl).await {
                    Ok(lines) => done.routes.extend(lines),
                    Err(source) => {
                        return Err((done, FederationError::Backend { what: format!("routing the pods of `{}` on the lab host", me.name()), source }))
                    }
                }
            }
        }
        for (me, peer) in self.sides() {
            for dest in self.dests_for(peer) {
                if let Err(source) = me.backend.set_guest_route(&me.spec, dest, true, ctl).await {
                    return Err((done, FederationError::Backend { what: format!("adding routes in `{}`", me.name()), source }));
                }
            }
            done.routes.extend(self.guest_lines(me, peer));
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
        if self.opens_pods() {
            for (me, _) in self.sides() {
                done.routes.extend(me.backend.describe_host_pod_routes(&me.spec));
            }
        }
        for (me, peer) in self.sides() {
            done.routes.extend(self.guest_lines(me, peer));
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
        if self.opens_pods() {
            for (me, _) in self.sides() {
                let m = me.backend.missing_host_pod_routes(&me.spec).await.map_err(|source| FederationError::Backend {
                    what: format!("reading the lab host's routes to the pods of `{}`", me.name()),
                    source,
                })?;
                missing.extend(m);
            }
        }
        for (me, peer) in self.sides() {
            let present = me.backend.guest_routes(&me.spec).await.map_err(|source| FederationError::Backend {
                what: format!("reading routes of `{}`", me.name()),
                source,
            })?;
            for (holder, _) in me.backend.guest_route_holders(&me.spec) {
                for d in self.dests_for(peer) {
                    if !present.iter().any(|(h, dest)| *h == holder && *dest == d) {
                        missing.push(format!("{holder}: route to {d}"));
                    }
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

    /// After the pair's registry tags are gone: the lab host stops routing the pods of each side
    /// that `still_federated` (read from the registry after the tags went) says has no other
    /// federation. Of two federations of one instance closed at once, the later to drop its tags
    /// sees none left, so the routes never outlive the last federation that needs them.
    pub async fn release_pods(&self, still_federated: &(dyn Fn(&str) -> bool + Sync), ctl: &OpControl) -> Result<(), FederationError> {
        for (me, _) in self.sides() {
            if still_federated(me.name()) {
                continue;
            }
            me.backend.set_host_pod_routes(&me.spec, false, ctl).await.map_err(|source| FederationError::Backend {
                what: format!("removing the lab host's routes to the pods of `{}`", me.name()),
                source,
            })?;
        }
        Ok(())
    }

    /// Take every piece away but the lab host's routes to the pods, which
    /// [`Pair::release_pods`] takes once the registry tags are gone (idempotent; pieces
    /// already gone are fine).
    pub async fn close(&self, namespaces: &[String], ctl: &OpControl) -> Result<(), FederationError> {
        self.close_policies(namespaces).await?;
        for (me, peer) in self.sides() {
            for dest in self.dests_for(peer) {
                me.backend.set_guest_route(&me.spec, dest, false, ctl).await.map_err(|source| FederationError::Backend {
                    what: format!("removing routes in `{}`", me.name()),
                    source,
                })?;
            }
        }
        // Interfaces may be gone already; deny_pair finds rules by the pair's comment.
        let la = Link { instance: self.a.name().into(), iface: backend_iface(&self.a).await, subnet: self.a.spec.subnet, pod_cidr: self.pod_cidr_of(&self.a) };
        let lb = Link { instance: self.b.name().into(), iface: backend_iface(&self.b).await, subnet: self.b.spec.subnet, pod_cidr: self.pod_cidr_of(&self.b) };
        self.a.backend.forwarding().deny_pair(&la, &lb).await.map_err(|source| FederationError::HostNet {
            what: format!("closing forwarding for {}", self.id()),
            source,
        })
    }
}

async fn link_of(s: &Side, pod_cidr: Option<net::Ipv4Net>) -> Result<Link, FederationError> {
    let iface = s.backend.host_interface(&s.spec).await.map_err(|source| FederationError::Backend {
        what: format!("finding the host interface of `{}`", s.name()),
        source,
    })?;
    Ok(Link {
        instance: s.name().to_string(),
        iface,
        subnet: s.spec.subnet,
        pod_cidr,
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
