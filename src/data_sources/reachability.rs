//! `homelab_reachability`: the isolation proof in the user's own plan. At read time it probes
//! (see [`crate::reachability`]) from every node and pod of the instances in the registry, and
//! reports what answered; built to sit in a `check` block, so that every plan re-proves
//! isolation and warns when it breaks. Read-only: nothing is written, no reservation is made.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

use crate::diagnostics;
use crate::federation::Side;
use crate::context::Shared;
use crate::reachability::{self, Options};
use crate::registry::Status;
use crate::schema::{attributes, boolean, computed, number, object, optional, string, string_list};

/// Default probe timeout.
const DEFAULT_TIMEOUT_MS: i64 = 500;
/// Bounds of `timeout_ms`.
const TIMEOUT_MS: (i64, i64) = (50, 5000);

/// One row of the matrix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowState {
    /// Source guest.
    pub from: Value<String>,
    /// Source instance.
    pub from_instance: Value<String>,
    /// Target instance.
    pub to: Value<String>,
    /// Target address.
    pub target: Value<String>,
    /// What the target is.
    pub target_name: Value<String>,
    /// Whether it answered.
    pub reachable: Value<bool>,
    /// Why not, or `answered`.
    pub reason: Value<String>,
}

/// The data source's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReachabilityState {
    /// Probe only from this instance (input).
    pub instance: Value<String>,
    /// Probe timeout (input).
    pub timeout_ms: Value<i64>,
    /// Every probe.
    pub matrix: Value<Vec<RowState>>,
    /// Reachable addresses of instances not federated with the source.
    pub foreign_reachable: Value<Vec<String>>,
    /// Reachable addresses across federations.
    pub federated_reachable: Value<Vec<String>>,
}

/// The data source.
pub struct ReachabilityDataSource {
    shared: Arc<Shared>,
}

impl ReachabilityDataSource {
    /// The data source on the provider's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        ReachabilityDataSource { shared }
    }

    /// Its schema.
    pub fn data_source_schema() -> Schema {
        let row = object(&[
            ("from", string()),
            ("from_instance", string()),
            ("to", string()),
            ("target", string()),
            ("target_name", string()),
            ("reachable", boolean()),
            ("reason", string()),
        ]);
        Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::markdown(
                    "The isolation audit, at every read: from every node and pod of the instances in the registry (or of \
                     `instance`), one ICMP echo to every address of every other instance (its nodes, pods, gateway and the \
                     first address of its service CIDR) and to the other nodes and pods of its own, and what answered. \
                     Probes run only inside the lab's own guests: in-process in the `netns` namespaces, over `vagrant ssh` in \
                     Vagrant guests (the ordered channel federation uses); at most 16 guests probe at once, each waiting \
                     `timeout_ms` for answers. Put it in a `check` block (Terraform 1.5+) asserting \
                     `length(foreign_reachable) == 0`, and every plan re-proves isolation and warns naming what answered.\n\n\
                     Cost: on `netns` probes are raw ICMP sockets inside the namespaces, no process per probe: a full probe \
                     of 3 instances of 2 nodes and 1 pod each (180 probes) took 1.3 ms, less than one `ping` round, on the \
                     machine of `cargo bench --bench reachability`. On `vagrant` each node costs one `vagrant ssh` (Vagrant's own start-up, \
                     seconds each, one at a time per instance), so a check block adds seconds per node to every plan; \
                     `instance` limits the sources.",
                ),
                attributes: attributes(vec![
                    ("instance", optional(string(), "Probe only from the nodes and pods of this instance (default: from every instance with a lab in the registry). Targets are always every instance.")),
                    ("timeout_ms", optional(number(), "How long each guest waits for answers, in milliseconds, from 50 to 5000 (default 500). A probe that gets no route fails at once; only silence waits this long.")),
                    ("matrix", computed(AttributeType::List(Box::new(row)),
                        "Every probe: `from` (the source node or pod, `acme-cp-1-pod-1`), `from_instance` (its instance), `to` (the target's instance), `target` (the address), `target_name` (`globex-cp-1`, `globex-cp-1-pod-1`, `gateway`, `service`: the first address of the service CIDR), `reachable`, and `reason`: `answered`, `no route (Network is unreachable)` (the source has no route: isolation by absence of routes), `unreachable (ICMP … from <router>)`, `no answer within <timeout> ms` (silence, as a dropping firewall gives), or `probe failed: …`. A source's own instance is probed on its other nodes and pods only.")),
                    ("foreign_reachable", computed(string_list(), "Answers from instances not federated with the source, as `<address> (<target_name> of <instance>) from <source>`: isolation is broken when this is not empty.")),
                    ("federated_reachable", computed(string_list(), "Answers across a federation (`homelab_federation`), in the same words: what the federations opened.")),
                ]),
                ..Default::default()
            },
        }
    }
}

#[async_trait]
impl DataSource for ReachabilityDataSource {
    type State<'a> = ReachabilityState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Self::data_source_schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        if let Value::Value(ms) = config.timeout_ms {
            if !(TIMEOUT_MS.0..=TIMEOUT_MS.1).contains(&ms) {
                diags.error(
                    "Invalid timeout_ms".to_string(),
                    format!("timeout_ms = {ms} is out of range: from {} to {} milliseconds.", TIMEOUT_MS.0, TIMEOUT_MS.1),
                    AttributePath::new("timeout_ms"),
                );
            }
        }
        if let Value::Value(name) = &config.instance {
            if let Err(e) = crate::registry::validate_name(name) {
                diagnostics::error(diags, "", &e);
            }
        }
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let ctx = self.shared.get(diags)?;
        let doc = match ctx.registry.snapshot() {
            Ok(d) => d,
            Err(e) => {
                diagnostics::error(diags, "homelab_reachability", &e);
                return None;
            }
        };
        let mut sides = Vec::new();
        for entry in doc.instances.values() {
            if entry.status != Status::Allocated || entry.lab.is_none() {
                continue;
            }
            match Side::from_entry(entry.clone(), ctx.backends.as_ref(), &ctx.settings.home) {
                Ok(s) => sides.push(reachability::Lab::of(&s)),
                Err(e) => diagnostics::warning(diags, format!("homelab_reachability: instance {:?} is left out", entry.name), e.to_string()),
            }
        }
        let timeout_ms = match config.timeout_ms {
            Value::Value(ms) => ms,
            _ => DEFAULT_TIMEOUT_MS,
        };
        let opts = Options { timeout: Duration::from_millis(timeout_ms as u64), ..Options::default() };
        let only = match &config.instance {
            Value::Value(n) => Some(n.as_str()),
            _ => None,
        };
        let m = match reachability::probe(&sides, only, opts).await {
            Ok(m) => m,
            Err(e) => {
                diagnostics::error(diags, "homelab_reachability", &e);
                return None;
            }
        };
        let rows = m
            .rows
            .into_iter()
            .map(|r| RowState {
                from: Value::Value(r.from),
                from_instance: Value::Value(r.from_instance),
                to: Value::Value(r.to),
                target: Value::Value(r.target.to_string()),
                target_name: Value::Value(r.target_name),
                reachable: Value::Value(r.reachable),
                reason: Value::Value(r.reason),
            })
            .collect();
        Some(ReachabilityState {
            instance: config.instance,
            timeout_ms: config.timeout_ms,
            matrix: Value::Value(rows),
            foreign_reachable: Value::Value(m.foreign_reachable),
            federated_reachable: Value::Value(m.federated_reachable),
        })
    }
}
