//! The isolation proof at read time: from every node and pod of the instances in the registry,
//! one ICMP echo to every address of every other instance (its nodes, its pods, its gateway and
//! the first address of its service CIDR) and to every other node and pod of its own, and a
//! matrix of what answered. Probes run only inside the lab's own guests (the backend's
//! [`Backend::probe`]: in-process in the `netns` namespaces, over `vagrant ssh` in Vagrant
//! guests), with a short timeout and a bound on how many guests probe at once.
//!
//! The summaries are what a `check` block asserts on: `foreign_reachable` (answers from an
//! instance that is not federated with the source: isolation is broken) and
//! `federated_reachable` (answers across a federation, which opened them on purpose).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::backend::{Backend, BackendError, LabSpec};
use crate::federation::Side;

/// One instance's lab as probes see it.
#[derive(Clone)]
pub struct Lab {
    /// Its lab as built.
    pub spec: LabSpec,
    /// The backend that runs it (and probes from its guests).
    pub backend: Arc<dyn Backend>,
    /// The instances it is federated with.
    pub federated: Vec<String>,
}

impl Lab {
    /// The lab of a registry side.
    pub fn of(side: &Side) -> Lab {
        Lab { spec: side.spec.clone(), backend: side.backend.clone(), federated: side.entry.federated.clone() }
    }

    fn name(&self) -> &str {
        &self.spec.instance
    }
}

/// How a probe run behaves.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long each guest waits for answers.
    pub timeout: Duration,
    /// How many guests probe at once.
    pub parallelism: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_millis(500), parallelism: 16 }
    }
}

/// One address of an instance that probes aim at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `acme-cp-1`, `acme-cp-1-pod-1`, `gateway`, `service`.
    pub name: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// A node or pod (a guest), rather than the gateway or the service address.
    pub guest: bool,
}

/// One probe: from a guest to an address of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The source's instance.
    pub from_instance: String,
    /// The source guest (`acme-cp-1-pod-1`).
    pub from: String,
    /// The target's instance.
    pub to: String,
    /// The target address.
    pub target: Ipv4Addr,
    /// What the address is (`globex-cp-1`, `globex-cp-1-pod-1`, `gateway`, `service`).
    pub target_name: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Why not, or `answered`.
    pub reason: String,
    /// Whether source and target instances are federated.
    pub federated: bool,
}

impl Row {
    /// `<target> (<target_name> of <to>) from <from>`: how a summary names a reachable row.
    pub fn describe(&self) -> String {
        format!("{} ({} of {}) from {}", self.target, self.target_name, self.to, self.from)
    }
}

/// What a probe run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matrix {
    /// Every probe, sorted by source, target instance and target.
    pub rows: Vec<Row>,
    /// Rows that answered across instances that are not federated.
    pub foreign_reachable: Vec<String>,
    /// Rows that answered across a federation.
    pub federated_reachable: Vec<String>,
}

/// Why a probe run could not be made.
#[derive(Debug, Error)]
pub enum ReachabilityError {
    /// `instance` names no instance with a lab in the registry.
    #[error("no instance `{name}` with a lab in the registry (instances: {known})")]
    UnknownInstance {
        /// The name asked for.
        name: String,
        /// The instances there are.
        known: String,
    },
    /// A guest could not probe.
    #[error("probing from `{from}` of instance `{instance}`: {source}")]
    Backend {
        /// The instance.
        instance: String,
        /// The source guest.
        from: String,
        /// The cause.
        #[source]
        source: BackendError,
    },
}

/// The addresses of an instance that probes aim at: its guests (nodes, pods), its gateway, and
/// the first address of its service CIDR (the API service of a real cluster).
pub fn targets(backend: &dyn Backend, spec: &LabSpec) -> Vec<Target> {
    let mut out: Vec<Target> = backend
        .probe_sources(spec)
        .into_iter()
        .map(|(name, ip)| Target { name, ip, guest: true })
        .collect();
    out.push(Target { name: "gateway".into(), ip: spec.gateway, guest: false });
    let first = Ipv4Addr::from(u32::from(spec.service_cidr.network()).saturating_add(1));
    out.push(Target { name: "service".into(), ip: first, guest: false });
    out
}

/// Probe from every guest of `sides` (only of `only`'s, when given) to the others and to its
/// own instance's other guests (never to its own gateway or service address, which a pod has
/// no business reaching).
pub async fn probe(sides: &[Lab], only: Option<&str>, opts: Options) -> Result<Matrix, ReachabilityError> {
    if let Some(name) = only {
        if !sides.iter().any(|s| s.name() == name) {
            let mut known: Vec<&str> = sides.iter().map(Lab::name).collect();
            known.sort();
            return Err(ReachabilityError::UnknownInstance { name: name.into(), known: known.join(", ") });
        }
    }
    let all: Vec<(String, Vec<Target>)> = sides
        .iter()
        .map(|s| (s.name().to_string(), targets(s.backend.as_ref(), &s.spec)))
        .collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(opts.parallelism.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for side in sides.iter().filter(|s| only.is_none_or(|n| s.name() == n)) {
        for (from, _) in side.backend.probe_sources(&side.spec) {
            // (instance, target) per probe, in the order sent.
            let mut aims: Vec<(String, Target)> = Vec::new();
            for (to, ts) in &all {
                for t in ts {
                    let own = to == side.name();
                    if own && (!t.guest || t.name == from) {
                        continue;
                    }
                    aims.push((to.clone(), t.clone()));
                }
            }
            let backend: Arc<dyn Backend> = side.backend.clone();
            let spec = side.spec.clone();
            let (gate, instance, peers) = (gate.clone(), side.name().to_string(), side.federated.clone());
            set.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let ips: Vec<Ipv4Addr> = aims.iter().map(|(_, t)| t.ip).collect();
                let found = backend.probe(&spec, &from, &ips, opts.timeout).await;
                (instance, from, peers, aims, found)
            });
        }
    }
    let mut rows = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (instance, from, peers, aims, found) = joined.map_err(|e| ReachabilityError::Backend {
            instance: "?".into(),
            from: "?".into(),
            source: BackendError::Other(format!("probe task failed: {e}")),
        })?;
        let outcomes = found.map_err(|source| ReachabilityError::Backend { instance: instance.clone(), from: from.clone(), source })?;
        for ((to, t), outcome) in aims.into_iter().zip(outcomes) {
            rows.push(Row {
                from_instance: instance.clone(),
                from: from.clone(),
                federated: peers.contains(&to),
                to,
                target: t.ip,
                target_name: t.name,
                reachable: outcome.reachable(),
                reason: outcome.reason(opts.timeout),
            });
        }
    }
    Ok(summarize(rows))
}

/// Sort the rows and draw the summaries.
pub fn summarize(mut rows: Vec<Row>) -> Matrix {
    rows.sort_by(|a, b| (&a.from, &a.to, a.target).cmp(&(&b.from, &b.to, b.target)));
    let across = |r: &&Row| r.reachable && r.to != r.from_instance;
    let foreign_reachable = rows.iter().filter(across).filter(|r| !r.federated).map(Row::describe).collect();
    let federated_reachable = rows.iter().filter(across).filter(|r| r.federated).map(Row::describe).collect();
    Matrix { rows, foreign_reachable, federated_reachable }
}

/// What `ProbeOutcome::NoRoute` looks like in a reason (for tests and callers that assert).
pub fn is_no_route(reason: &str) -> bool {
    reason.starts_with("no route")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(from_instance: &str, from: &str, to: &str, target: &str, reachable: bool, federated: bool) -> Row {
        Row {
            from_instance: from_instance.into(),
            from: from.into(),
            to: to.into(),
            target: target.parse().unwrap(),
            target_name: "x".into(),
            reachable,
            reason: if reachable { "answered".into() } else { "no route (Network is unreachable)".into() },
            federated,
        }
    }

    #[test]
    fn only_answers_across_instances_count_and_federation_sorts_them() {
        let m = summarize(vec![
            row("acme", "acme-cp-1", "initech", "192.168.58.10", true, false),
            row("acme", "acme-cp-1", "acme", "192.168.56.20", true, false),
            row("acme", "acme-cp-1", "globex", "192.168.57.10", true, true),
            row("acme", "acme-cp-1", "globex", "10.97.0.1", false, true),
        ]);
        assert_eq!(m.foreign_reachable, vec!["192.168.58.10 (x of initech) from acme-cp-1"]);
        assert_eq!(m.federated_reachable, vec!["192.168.57.10 (x of globex) from acme-cp-1"]);
        assert_eq!(m.rows[0].to, "acme", "sorted by source, then target instance");
        assert!(is_no_route(&m.rows[1].reason));
    }
}
