//! `homelab_cidr_allocation`: what an instance has, or would get next, and how full the pools
//! are. Read-only: it never writes the registry or the event log and makes no reservation.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{DataSource, Diagnostics};

use crate::diagnostics::{self, OrReport};
use crate::net;
use crate::context::Shared;
use crate::registry::{PoolUsage, Wants};
use crate::schema::{attributes, computed, number, object, required, string, string_list};

/// One pool's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolState {
    /// The pool.
    pub cidr: Value<String>,
    /// Slot prefix.
    pub prefix: Value<i64>,
    /// Slots in all.
    pub capacity: Value<i64>,
    /// Slots held.
    pub used: Value<i64>,
    /// Slots free.
    pub free: Value<i64>,
}

/// Usage of the four pools.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolsState {
    /// Host-only pool.
    pub host: Value<PoolState>,
    /// Pod pool.
    pub pod: Value<PoolState>,
    /// Service pool.
    pub service: Value<PoolState>,
    /// Management network pool.
    pub mgmt: Value<PoolState>,
}

/// The data source's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CidrAllocationState {
    /// Instance name (input).
    pub name: Value<String>,
    /// `allocated`, `reserved` or `free`.
    pub status: Value<String>,
    /// Subnet.
    pub subnet: Value<String>,
    /// Gateway.
    pub gateway: Value<String>,
    /// Pod CIDR.
    pub pod_cidr: Value<String>,
    /// Service CIDR.
    pub service_cidr: Value<String>,
    /// Management network.
    pub mgmt_cidr: Value<String>,
    /// Backend of the entry.
    pub backend: Value<String>,
    /// The lab host the entry lives on.
    pub host: Value<String>,
    /// Reservation expiry.
    pub expires_at: Value<String>,
    /// Federation peers.
    pub federated_with: Value<Vec<String>>,
    /// The workspace of the entry.
    pub owner: Value<String>,
    /// When the entry was made (reservation, or creation).
    pub since: Value<String>,
    /// Pool usage.
    pub pools: Value<PoolsState>,
}

/// The data source.
pub struct CidrAllocationDataSource {
    shared: Arc<Shared>,
}

impl CidrAllocationDataSource {
    /// The data source on the provider's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        CidrAllocationDataSource { shared }
    }

    /// Its schema.
    pub fn data_source_schema() -> Schema {
        let pool = object(&[
            ("cidr", string()),
            ("prefix", number()),
            ("capacity", number()),
            ("used", number()),
            ("free", number()),
        ]);
        Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::markdown(
                    "What an instance holds in the registry, or would get next if it were planned now, and how full the pools are. \
                     Reading it changes nothing: no reservation is made and no event is written.",
                ),
                attributes: attributes(vec![
                    ("name", required(string(), "Instance name: a lowercase DNS label of 1 to 32 characters, starting with a letter and not ending with `-`.")),
                    ("status", computed(string(), "`allocated` (the instance exists), `creating` (an apply began it at `since` and is still at work), `interrupted` (the apply that began it was killed before it answered Terraform, so no state holds it: the next apply of its workspace `owner` adopts it), `unconfirmed` (it was created and answered just before its apply was killed: the next refresh of `owner` confirms it if its state holds it, else the next apply adopts it), `removing` (a run of its workspace is tearing it down), `removal interrupted` (that run was killed, or its destroy failed: the next destroy of `owner` finishes it, the next apply re-makes it), `reserved` (a plan holds networks for it until `expires_at`) or `free` (the values below are what it would get next).")),
                    ("subnet", computed(string(), "Host-only subnet.")),
                    ("gateway", computed(string(), "Gateway of the subnet: its first host address (.1).")),
                    ("pod_cidr", computed(string(), "Kubernetes pod CIDR.")),
                    ("service_cidr", computed(string(), "Kubernetes service CIDR.")),
                    ("mgmt_cidr", computed(string(), "Management network (Vagrant on libvirt instances only; null otherwise).")),
                    ("backend", computed(string(), "Backend of the registry entry (null when `free`).")),
                    ("host", computed(string(), "The lab host the instance lives on (the machine's host name; for `netns` `<host name>/<netns_host>`), as recorded when it was created; null when `free` or `reserved`. With the registry on etcd, this tells which host of the team holds it.")),
                    ("expires_at", computed(string(), "When the reservation expires (RFC 3339; only when `reserved`).")),
                    ("federated_with", computed(string_list(), "Instances this one is federated with.")),
                    ("owner", computed(string(), "The Terraform workspace the entry belongs to (`workspace <name> of <dir> on <host>`; null when `free`, or for entries written before workspaces were recorded).")),
                    ("since", computed(string(), "When the entry was made: the reservation, or the creation (RFC 3339; null when `free`).")),
                    ("pools", computed(object(&[("host", pool.clone()), ("pod", pool.clone()), ("service", pool.clone()), ("mgmt", pool)]),
                        "Usage of each pool (`host`, `pod`, `service`, `mgmt`): `cidr`, slot `prefix`, `capacity` in slots, `used` slots (allocated or reserved), `free` slots.")),
                ]),
                ..Default::default()
            },
        }
    }
}

fn pool_state(u: &PoolUsage) -> Value<PoolState> {
    Value::Value(PoolState {
        cidr: Value::Value(u.cidr.to_string()),
        prefix: Value::Value(i64::from(u.prefix)),
        capacity: Value::Value(u.capacity as i64),
        used: Value::Value(u.used as i64),
        free: Value::Value(u.free as i64),
    })
}

#[async_trait]
impl DataSource for CidrAllocationDataSource {
    type State<'a> = CidrAllocationState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Self::data_source_schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        if let Value::Value(name) = &config.name {
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
        let Value::Value(name) = config.name.clone() else {
            diags.root_error_short("`name` must be known to read homelab_cidr_allocation");
            return None;
        };
        let host = ctx.host_networks().await.or_report(diags, "reading the host's networks")?;
        let registry = &ctx.registry;
        let preview = registry.preview(&name, &Wants::auto(false), &host).or_report(diags, &format!("homelab_cidr_allocation {name:?}"))?;
        let doc = registry.snapshot().or_report(diags, "")?;
        let usage = registry.usage(&doc);
        let a = preview.allocation;
        let entry = preview.entry.as_ref();
        Some(CidrAllocationState {
            name: Value::Value(name),
            status: Value::Value(match entry.and_then(|e| e.creating.as_ref()) {
                Some(c) => c.word().to_string(),
                None => preview.status.to_string(),
            }),
            subnet: Value::Value(a.subnet.to_string()),
            gateway: Value::Value(net::gateway(&a.subnet).to_string()),
            pod_cidr: Value::Value(a.pod_cidr.to_string()),
            service_cidr: Value::Value(a.service_cidr.to_string()),
            mgmt_cidr: a.mgmt_cidr.map(|m| Value::Value(m.to_string())).unwrap_or(Value::Null),
            backend: entry.map(|e| Value::Value(e.backend.clone())).unwrap_or(Value::Null),
            host: entry.and_then(|e| e.lab.as_ref()).and_then(|l| l.host.clone()).map(Value::Value).unwrap_or(Value::Null),
            expires_at: entry
                .and_then(|e| e.reservation.as_ref())
                .map(|r| Value::Value(crate::registry::rfc3339(r.expires_at)))
                .unwrap_or(Value::Null),
            federated_with: Value::Value(entry.map(|e| e.federated.clone()).unwrap_or_default()),
            owner: entry.and_then(|e| e.owner.as_ref()).map(|o| Value::Value(o.to_string())).unwrap_or(Value::Null),
            since: entry
                .map(|e| Value::Value(crate::registry::rfc3339(e.creating.as_ref().map(|c| c.since).unwrap_or(e.created_at))))
                .unwrap_or(Value::Null),
            pools: Value::Value(PoolsState {
                host: pool_state(&usage[0]),
                pod: pool_state(&usage[1]),
                service: pool_state(&usage[2]),
                mgmt: pool_state(&usage[3]),
            }),
        })
    }
}
