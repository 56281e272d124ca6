//! `homelab_federation`: the opt-in, audited bridge between exactly two instances. Plan checks
//! both instances exist (or are planned), refuses a pair already federated and warns, where a
//! reviewer reads, exactly what becomes reachable; apply tags the registry (one audited event),
//! then opens forwarding for this pair only, guest routes and NetworkPolicies; read finds missing
//! pieces so the next plan repairs them; destroy takes every piece away.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tf_provider::schema::{AttributeType, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource};

use crate::backend::{BackendKind, OpControl};
use crate::context::{Configured, Shared};
use crate::diagnostics::{self, attribute_error, Message, OrReport, Report};
use crate::federation::{pair_id, FederationError, Opened, Pair, Side};
use crate::registry::{Entry, FederationRecord, RegistryError, Status};
use crate::schema::{attributes, computed, known, optional, optional_computed, required, string, string_list, val};

/// `homelab_federation` state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FederationState {
    /// `<a>+<b>`, names sorted.
    pub id: Value<String>,
    /// The two instance names (elements may be unknown until apply).
    pub instances: Value<BTreeSet<Value<String>>>,
    /// Why (recorded in the audit log).
    pub reason: Value<String>,
    /// Kubernetes namespaces that get the NetworkPolicy.
    pub namespaces: Value<Vec<String>>,
    /// Routes and forwarding rules added.
    pub routes: Value<Vec<String>>,
    /// NetworkPolicies applied.
    pub policies: Value<Vec<String>>,
    /// When it was created.
    pub created_at: Value<String>,
    /// `complete`, or what is missing.
    pub state: Value<String>,
}

/// The resource.
pub struct FederationResource {
    shared: Arc<Shared>,
}

const COMPLETE: &str = "complete";
const OP_TIMEOUT: Duration = Duration::from_secs(600);

impl FederationResource {
    /// The resource on the provider's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        FederationResource { shared }
    }

    /// Its schema.
    pub fn resource_schema() -> Schema {
        Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::markdown(
                    "Federates exactly two instances: forwarding between their subnets on the lab's host for this pair \
                     only (never IPv4 forwarding alone: an nftables table of the provider on `netns`, rules ahead of \
                     libvirt's on libvirt), a route to the peer's subnet in every node, a NetworkPolicy \
                     `homelab-federation-<peer>` in each cluster, a registry tag and an audit event. Isolation is the default; \
                     this is the one audited exception. On `netns` the pair's subnets and pod CIDRs reach each other: the lab \
                     host forwards between them (every network of one side to every network of the other), routes each \
                     node's pod slice via that node, and every node and pod routes the peer's subnet and pod CIDR; \
                     service CIDRs stay unrouted. On `vagrant` the two host-only subnets reach each other (nodes, and pods \
                     through their node's address); pod CIDRs are not routed between instances. Every plan that creates \
                     one warns exactly what it puts in place. Federation is not transitive.\n\n\
                     The NetworkPolicy selects every pod of each listed namespace and admits the peer's subnet and pod \
                     CIDR, and the instance's own pod CIDR and subnet: a policy that selects a pod isolates it, so the \
                     cluster's own traffic stays admitted. In a namespace that your own policies already restrict, this \
                     also admits the cluster's own pods and nodes there.",
                ),
                attributes: attributes(vec![
                    ("id", computed(string(), "`<a>+<b>`, the two names sorted.")),
                    ("instances", required(AttributeType::Set(Box::new(AttributeType::String)), "The two distinct instances to federate (use references such as `homelab_instance.acme.name` so Terraform creates them first and destroys the federation first). Changing it replaces the federation.")),
                    ("reason", optional(string(), "Why the two instances are federated; recorded in the audit log (changes are recorded too).")),
                    ("namespaces", optional_computed(string_list(), "Kubernetes namespaces that get the NetworkPolicy in each cluster. Default `[\"default\"]`. Only instances with a cluster (Vagrant with `provision`) get policies.")),
                    ("routes", computed(string_list(), "One human-readable line per forwarding rule, host setting, lab host route (to a pod slice, on `netns`) or guest route (in a node or pod) put in place.")),
                    ("policies", computed(string_list(), "`<instance>/<namespace>/<name>` of every NetworkPolicy applied; empty when neither instance has a cluster (`netns` instances have none: no policy applies).")),
                    ("created_at", computed(string(), "When the federation was created (RFC 3339).")),
                    ("state", computed(string(), "`complete` when every piece is in place; otherwise what is missing (forwarding rule, guest route, policy, registry tag), and the next plan shows the repair; its apply records what it restored (`federation.repair` in the audit log).")),
                ]),
                ..Default::default()
            },
        }
    }
}

/// The two names, when every element is known.
fn names(s: &FederationState) -> Option<(String, String)> {
    let set = known(&s.instances)?;
    let v: Vec<String> = set.iter().map(known).collect::<Option<Vec<String>>>()?;
    (v.len() == 2).then(|| (v[0].clone(), v[1].clone()))
}

fn namespaces(s: &FederationState) -> Vec<String> {
    known(&s.namespaces).unwrap_or_else(|| vec!["default".to_string()])
}

/// The federation's key in the run's name book.
fn book_key(id: &str) -> String {
    format!("federation:{id}")
}

/// The state holds the federation `id` (a refresh, plan or destroy of it is running): a
/// creation of it that a killed run began is over (see `registry::interrupted`).
fn confirm_held(ctx: &Configured, diags: &mut Diagnostics, id: &str) {
    let creating = ctx.registry.snapshot().ok().and_then(|d| d.federations.get(id).map(|r| r.creating.is_some()));
    if creating == Some(false) {
        return;
    }
    if let Err(e) = ctx.registry.confirm_federation(id) {
        diagnostics::warning(diags, format!("{}: could not record in the registry that the state holds it", ctx_name(id)), e.to_string());
    }
}

fn ctx_name(id: &str) -> String {
    format!("homelab_federation {id:?}")
}

/// Put what opening the pair did into state. On failure, what is in place is recorded too:
/// Terraform keeps it (tainted after a create) and destroy takes it away.
fn record_opened(
    state: &mut FederationState,
    result: Result<Opened, (Opened, FederationError)>,
    diags: &mut Diagnostics,
    context: &str,
) {
    let (done, status) = match result {
        Ok(done) => (done, COMPLETE.to_string()),
        Err((done, e)) => {
            diagnostics::error(diags, context, &e);
            let status = format!("incomplete: {e}");
            (done, status)
        }
    };
    state.routes = val(done.routes);
    state.policies = val(done.policies);
    state.state = val(status);
}

impl FederationResource {
    /// What create and update start from: the context, the pair's two names, its id and the
    /// diagnostics' context.
    fn apply_preamble(&self, diags: &mut Diagnostics, config_state: &FederationState) -> Option<(Arc<Configured>, String, String, String, String)> {
        let ctx = self.shared.get(diags)?;
        let Some((a, b)) = names(config_state) else {
            attribute_error(diags, "instances", "A federation joins exactly two instances".into(), "`instances` must hold two distinct names.".into());
            return None;
        };
        let id = pair_id(&a, &b);
        let context = ctx_name(&id);
        Some((ctx, a, b, id, context))
    }

    fn entries(ctx: &Configured, a: &str, b: &str) -> Result<(Option<Entry>, Option<Entry>), RegistryError> {
        let doc = ctx.registry.snapshot()?;
        Ok((doc.instances.get(a).cloned(), doc.instances.get(b).cloned()))
    }

    fn pair(ctx: &Configured, a: Entry, b: Entry) -> Result<Pair, FederationError> {
        let home = &ctx.settings.home;
        let sa = Side::from_entry(a, ctx.backends.as_ref(), home)?;
        let sb = Side::from_entry(b, ctx.backends.as_ref(), home)?;
        Pair::new(sa, sb)
    }

    /// What the federation `id` was declared with: the registry's record, else the newest
    /// `federation.create` event and the `federation.update`s after it (registries written
    /// before records were kept).
    fn declaration(ctx: &Configured, id: &str) -> Result<Option<FederationRecord>, RegistryError> {
        if let Some(r) = ctx.registry.snapshot()?.federations.get(id) {
            return Ok(Some(r.clone()));
        }
        let mut record: Option<FederationRecord> = None;
        for e in ctx.registry.store().events()?.into_iter().filter(|e| e.subject == id) {
            match e.action.as_str() {
                "federation.create" => {
                    record = Some(FederationRecord {
                        reason: e.details["reason"].as_str().map(str::to_string),
                        namespaces: e.details["namespaces"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                            .unwrap_or_default(),
                        created_at: e.time,
                        owner: None,
                        creating: None,
                    })
                }
                "federation.update" => {
                    if let Some(r) = record.as_mut() {
                        if let Some(after) = e.details.pointer("/reason/after") {
                            r.reason = after.as_str().map(str::to_string);
                        }
                    }
                }
                "federation.destroy" => record = None,
                _ => {}
            }
        }
        Ok(record)
    }

    fn allocated_pair(ctx: &Configured, a: &str, b: &str) -> Result<Pair, FederationError> {
        let (ea, eb) = Self::entries(ctx, a, b)?;
        let get = |e: Option<Entry>, n: &str| match e {
            Some(e) if e.status == Status::Allocated => Ok(e),
            Some(_) => Err(FederationError::Registry(RegistryError::NotAllocated { name: n.into() })),
            None => Err(FederationError::Registry(RegistryError::NotFound { name: n.into() })),
        };
        Self::pair(ctx, get(ea, a)?, get(eb, b)?)
    }
    /// `plan_create`: the pair must exist (or be planned) and not be federated yet; the plan
    /// warns what becomes reachable.
    async fn plan_new(ctx: &Configured, diags: &mut Diagnostics, proposed_state: FederationState, config_state: FederationState) -> Option<(FederationState, ValueEmpty)> {
        let mut planned = proposed_state;
        planned.namespaces = match &config_state.namespaces {
            Value::Null => val(vec!["default".to_string()]),
            other => other.clone(),
        };
        planned.routes = Value::Unknown;
        planned.policies = Value::Unknown;
        planned.created_at = Value::Unknown;
        planned.state = Value::Unknown;
        let Some((a, b)) = names(&config_state) else {
            // Names unknown until apply: they are checked then.
            planned.id = Value::Unknown;
            return Some((planned, Value::Null));
        };
        let id = pair_id(&a, &b);
        planned.id = val(id.clone());
        let context = ctx_name(&id);
        let (ea, eb) = Self::entries(&ctx, &a, &b).or_report(diags, &context)?;
        let now = ctx.registry.now();
        let mut present = Vec::new();
        for (n, e) in [(&a, &ea), (&b, &eb)] {
            match e {
                Some(e) if e.holds(now) => present.push(e.clone()),
                _ => {
                    attribute_error(
                        diags,
                        "instances",
                        format!("No instance `{n}` to federate"),
                        format!("`{n}` is neither in the registry ({}) nor planned in this configuration. Declare it as a homelab_instance and refer to it (`homelab_instance.{n}.name`) so it is planned first.", ctx.registry.store().location()),
                    );
                }
            }
        }
        if present.len() != 2 {
            return None;
        }
        ctx.names.create(&book_key(&id)).ok();
        // Federated already, unless by an interrupted creation of this workspace (adopted).
        let interrupted = ctx.registry.interrupted_federations().is_ok_and(|l| {
            l.iter().any(|(i, _)| *i == id)
        });
        if (present[0].federated.contains(&b) || present[1].federated.contains(&a)) && !interrupted {
            let e = FederationError::Registry(RegistryError::AlreadyFederated { a: a.clone(), b: b.clone() });
            diagnostics::error(diags, &context, &e);
            return None;
        }
        // Touching the host needs privileges: fail at plan, before anything changes.
        let kind = BackendKind::parse(&present[0].backend).unwrap_or(ctx.choices.default_backend);
        let settings = present[0].lab.as_ref().map(|l| l.settings.clone()).unwrap_or_else(|| ctx.backends.lab_settings(kind));
        ctx.backends.backend(kind, &settings).forwarding().preflight().await.or_report(diags, &context)?;
        let (pa, pb) = (&present[0], &present[1]);
        // The netns lab host routes pods, so a netns pair opens them too (see `federation`).
        let opens_pods = kind == BackendKind::Netns;
        let namespaces = known(&planned.namespaces).unwrap_or_default();
        // Exactly what apply will put in place, read (never written) from the labs when they
        // exist already; in words when they are planned in the same run.
        let exact = match Self::pair(ctx, pa.clone(), pb.clone()) {
            Ok(pair) if pa.status == Status::Allocated && pb.status == Status::Allocated => pair.opened(&namespaces).await.ok(),
            _ => None,
        };
        let what = match &exact {
            Some(o) => {
                let mut lines: Vec<String> = o.routes.iter().map(|l| format!("  {l}")).collect();
                lines.extend(o.policies.iter().map(|p| format!("  NetworkPolicy {p}")));
                if o.policies.is_empty() {
                    lines.push("  no NetworkPolicy (neither instance has a cluster)".into());
                }
                format!("Exactly this is put in place:\n{}", lines.join("\n"))
            }
            None if opens_pods => "Put in place: forwarding on the lab host for this pair only (both directions, each subnet and pod CIDR to the other side's), on the lab host a route to every node's pod slice via its node, and in every node and pod a route to the peer's subnet and pod CIDR.".to_string(),
            None => format!(
                "Put in place: forwarding on the lab host for this pair only (both directions), a route to the peer's subnet in every node, and in each cluster a NetworkPolicy admitting the peer's subnet and pod CIDR into {namespaces:?} (keeping the cluster's own pods and nodes admitted)."
            ),
        };
        let (sa, sb) = (pa.allocation, pb.allocation);
        let reach = if opens_pods {
            format!(
                "these networks reach each other, in both directions: {} subnet {} and pod CIDR {} <-> {} subnet {} and pod CIDR {} (nodes and pods of both). Service CIDRs {} and {} stay unrouted.",
                pa.name, sa.subnet, sa.pod_cidr, pb.name, sb.subnet, sb.pod_cidr, sa.service_cidr, sb.service_cidr
            )
        } else {
            format!(
                "these subnets reach each other, in both directions: {} {} <-> {} {} (their nodes, and pods through their node's address). Pod CIDRs are not routed between the instances: {} and {} stay unreachable from the other side.",
                pa.name, sa.subnet, pb.name, sb.subnet, sa.pod_cidr, sb.pod_cidr
            )
        };
        diagnostics::warning(
            diags,
            format!("Federation {id} opens a path between two isolated instances"),
            format!(
                "Once applied, {reach}\n{what}\n\
                 Other instances stay unreachable and federation is not transitive. The change is recorded in the audit log{}.",
                known(&config_state.reason).map(|r| format!(" with the reason {r:?}")).unwrap_or_default(),
            ),
        );
        Some((planned, Value::Null))
    }
}

#[async_trait]
impl Resource for FederationResource {
    type State<'a> = FederationState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Self::resource_schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        if let Value::Value(set) = &config.instances {
            let all_known = set.iter().all(|v| v.is_value());
            if all_known && set.len() != 2 {
                attribute_error(
                    diags,
                    "instances",
                    "A federation joins exactly two instances".into(),
                    format!("`instances` holds {} distinct name(s): {set:?}. Give two different instance names.", set.len()),
                );
            }
            for n in set.iter().filter_map(known) {
                if let Err(e) = crate::registry::validate_name(&n) {
                    diagnostics::error(diags, "", &Message { summary: e.summary(), detail: e.detail(), attribute: Some("instances") });
                }
            }
        }
        if let Value::Value(nss) = &config.namespaces {
            for ns in nss {
                let ok = !ns.is_empty()
                    && ns.len() <= 63
                    && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !ns.starts_with('-')
                    && !ns.ends_with('-');
                if !ok {
                    attribute_error(diags, "namespaces", "Invalid Kubernetes namespace".into(), format!("{ns:?} is not a Kubernetes namespace name (a DNS label of at most 63 characters)"));
                }
            }
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
        let (a, b) = names(&state)?;
        let id = pair_id(&a, &b);
        ctx.names.read(&book_key(&id));
        let (ea, eb) = match Self::entries(&ctx, &a, &b) {
            Ok(x) => x,
            Err(e) => {
                diagnostics::error(diags, &ctx_name(&id), &e);
                return Some((state, private_state));
            }
        };
        confirm_held(&ctx, diags, &id);
        let (Some(ea), Some(eb)) = (ea, eb) else {
            tracing::info!(federation = %id, "an instance of the pair is gone: the federation is gone");
            return None;
        };
        let mut missing = Vec::new();
        if !ea.federated.contains(&b) || !eb.federated.contains(&a) {
            missing.push("registry tag".to_string());
        }
        match Self::pair(&ctx, ea, eb) {
            Ok(pair) => match pair.missing(&namespaces(&state)).await {
                Ok(m) => missing.extend(m),
                Err(e) => {
                    diagnostics::error(diags, &format!("{}: reading its pieces", ctx_name(&id)), &e);
                    return Some((state, private_state));
                }
            },
            Err(e) => missing.push(e.to_string()),
        }
        let mut new = state;
        new.id = val(id);
        new.state = val(if missing.is_empty() { COMPLETE.into() } else { format!("missing: {}", missing.join("; ")) });
        Some((new, private_state))
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        config_state: Self::State<'a>,
        _prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let ctx = self.shared.get(diags)?;
        let planned = Self::plan_new(&ctx, diags, proposed_state, config_state).await;
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
        if let Some((a, b)) = names(&prior_state) {
            ctx.names.keep(&book_key(&pair_id(&a, &b))).ok();
            confirm_held(&ctx, diags, &pair_id(&a, &b));
        }
        let mut planned = proposed_state;
        let mut replace = Vec::new();
        if config_state.instances != prior_state.instances {
            replace.push(AttributePath::new("instances"));
        }
        planned.namespaces = match &config_state.namespaces {
            Value::Null => val(vec!["default".to_string()]),
            other => other.clone(),
        };
        let repair = known(&prior_state.state).as_deref() != Some(COMPLETE);
        if planned.namespaces != prior_state.namespaces || repair || !replace.is_empty() {
            planned.routes = Value::Unknown;
            planned.policies = Value::Unknown;
        }
        planned.state = val(COMPLETE.to_string());
        if !replace.is_empty() {
            planned.created_at = Value::Unknown;
            planned.id = Value::Unknown;
            planned.state = Value::Unknown;
        }
        ctx.after_plan(diags);
        Some((planned, prior_private_state, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        let ctx = self.shared.get(diags)?;
        if let Some((a, b)) = names(&prior_state) {
            ctx.names.destroy(&book_key(&pair_id(&a, &b))).ok();
            confirm_held(&ctx, diags, &pair_id(&a, &b));
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
        let (ctx, a, b, id, context) = self.apply_preamble(diags, &config_state)?;
        let pair = Self::allocated_pair(&ctx, &a, &b).or_report(diags, &context)?;
        let nss = namespaces(&planned_state);
        let opened: Vec<String> = pair.reachability();
        // The registry tag first: it claims the pair atomically, so a second configuration
        // federating the same pair at the same time is refused, and it carries the audit event.
        let details = json!({
            "reason": known(&config_state.reason),
            "opened": opened,
            "namespaces": nss,
            "cidrs": {
                a.clone(): {"subnet": pair.a.spec.subnet.to_string(), "pod_cidr": pair.a.spec.pod_cidr.to_string()},
                b.clone(): {"subnet": pair.b.spec.subnet.to_string(), "pod_cidr": pair.b.spec.pod_cidr.to_string()},
            },
        });
        let record = FederationRecord {
            reason: known(&config_state.reason),
            namespaces: nss.clone(),
            created_at: ctx.registry.now(),
            owner: None,
            creating: None,
        };
        let created_at = record.created_at;
        ctx.registry.federate(&a, &b, record, details).or_report(diags, &context)?;
        tracing::warn!(federation = %id, "federation created: {}", opened.join("; "));
        let mut state = planned_state;
        state.id = val(id.clone());
        state.namespaces = val(nss.clone());
        state.created_at = val(crate::registry::rfc3339(created_at));
        let ctl = OpControl { timeout: OP_TIMEOUT, cancel: tf_provider::stop_token() };
        record_opened(&mut state, pair.open(&nss, &ctl).await, diags, &context);
        // Terraform records what this answers: the creation is over (unless Terraform died).
        if !crate::parent::terraform_gone() {
            if let Err(e) = ctx.registry.finish_federation(&id) {
                diagnostics::warning(diags, format!("{context}: could not record in the registry that the creation is over"), e.to_string());
            }
        }
        Some((state, planned_private_state))
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
        let (ctx, a, b, id, context) = self.apply_preamble(diags, &config_state)?;
        let pair = Self::allocated_pair(&ctx, &a, &b).or_report(diags, &context)?;
        match ctx.registry.retag(&a, &b) {
            Ok(true) => tracing::warn!(federation = %id, "registry tags restored"),
            Ok(false) => {}
            Err(e) => {
                diagnostics::error(diags, &context, &e);
                return None;
            }
        }
        let nss = namespaces(&planned_state);
        if config_state.reason != prior_state.reason || nss != namespaces(&prior_state) {
            let mut details = serde_json::Map::new();
            if config_state.reason != prior_state.reason {
                details.insert("reason".into(), json!({"before": known(&prior_state.reason), "after": known(&config_state.reason)}));
            }
            if nss != namespaces(&prior_state) {
                details.insert("namespaces".into(), json!({"before": namespaces(&prior_state), "after": nss}));
            }
            ctx.registry.update_federation(&a, &b, known(&config_state.reason), nss.clone(), details.into()).or_report(diags, &context)?;
        }
        let ctl = OpControl { timeout: OP_TIMEOUT, cancel: tf_provider::stop_token() };
        let dropped: Vec<String> = namespaces(&prior_state).into_iter().filter(|n| !nss.contains(n)).collect();
        if !dropped.is_empty() {
            if let Err(e) = pair.close_policies(&dropped).await {
                diagnostics::error(diags, &context, &e);
                return Some((prior_state, planned_private_state));
            }
        }
        // What is missing now (drift since the last apply) is what this apply re-opens: the
        // audit log records it, as it records the opening itself.
        let missing = match pair.missing(&nss).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(federation = %id, error = %e, "could not read what is missing before the repair");
                Vec::new()
            }
        };
        let mut state = planned_state;
        let opened = pair.open(&nss, &ctl).await;
        let complete = opened.is_ok();
        record_opened(&mut state, opened, diags, &context);
        if complete && !missing.is_empty() {
            if let Err(e) = ctx.registry.record("federation.repair", &id, json!({"restored": missing})) {
                diagnostics::warning(diags, format!("{context}: the repair was not recorded in the audit log"), e.to_string());
            }
        }
        Some((state, planned_private_state))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let ctx = self.shared.get(diags)?;
        let (a, b) = names(&prior_state)?;
        let id = pair_id(&a, &b);
        let context = ctx_name(&id);
        ctx.names.torn_down(&book_key(&id));
        ctx.remove_interrupted(diags).await;
        let ctl = OpControl { timeout: OP_TIMEOUT, cancel: tf_provider::stop_token() };
        let (ea, eb) = Self::entries(&ctx, &a, &b).or_report(diags, &context)?;
        let mut closed = Vec::new();
        let mut open_pair = None;
        if let (Some(ea), Some(eb)) = (ea, eb) {
            match Self::pair(&ctx, ea, eb) {
                Ok(pair) => {
                    closed = pair.reachability();
                    pair.close(&namespaces(&prior_state), &ctl).await.or_report(diags, &context)?;
                    open_pair = Some(pair);
                }
                Err(e) => tracing::warn!(federation = %id, error = %e, "instances no longer form a pair; removing the registry tags only"),
            }
        }
        ctx.registry.unfederate(&a, &b, json!({"closed": closed, "reason": known(&prior_state.reason)})).or_report(diags, &context)?;
        if let Some(pair) = open_pair {
            // Read after the tags went: see `Pair::release_pods`.
            let doc = ctx.registry.snapshot().or_report(diags, &context)?;
            let still = |n: &str| doc.instances.get(n).is_some_and(|e| !e.federated.is_empty());
            pair.release_pods(&still, &ctl).await.or_report(diags, &context)?;
        }
        Some(())
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let ctx = self.shared.get(diags)?;
        let parts: Vec<&str> = id.split('+').collect();
        if parts.len() != 2 {
            diags.root_error(
                format!("Cannot import homelab_federation {id:?}"),
                "The id of a federation is the two instance names joined by `+`, e.g. `acme+globex`.",
            );
            return None;
        }
        let (a, b) = (parts[0].to_string(), parts[1].to_string());
        let id = pair_id(&a, &b);
        let (ea, eb) = match Self::entries(&ctx, &a, &b) {
            Ok((Some(ea), Some(eb))) if ea.federated.contains(&b) || eb.federated.contains(&a) => (ea, eb),
            Ok(_) => {
                diags.root_error(
                    format!("Cannot import homelab_federation {id:?}"),
                    format!("The registry records no federation between `{a}` and `{b}`."),
                );
                return None;
            }
            Err(e) => {
                diagnostics::error(diags, &ctx_name(&id), &e);
                return None;
            }
        };
        // What it was declared with: the registry's record, else (registries from before
        // records were kept) the audit log.
        let record = Self::declaration(&ctx, &id).or_report(diags, &ctx_name(&id))?;
        let nss = record.as_ref().map(|r| r.namespaces.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| vec!["default".to_string()]);
        let mut state = FederationState {
            id: val(id.clone()),
            instances: val([val(a.clone()), val(b.clone())].into_iter().collect()),
            reason: record.as_ref().and_then(|r| r.reason.clone()).map(val).unwrap_or(Value::Null),
            namespaces: val(nss.clone()),
            created_at: record.as_ref().map(|r| val(crate::registry::rfc3339(r.created_at))).unwrap_or(Value::Null),
            state: val(COMPLETE.into()),
            ..Default::default()
        };
        // The importing state holds it now.
        if let Err(e) = ctx.registry.confirm_federation(&id) {
            diagnostics::warning(diags, format!("{}: could not record in the registry that the state holds it", ctx_name(&id)), e.to_string());
        }
        // What is in place, as a create would have recorded it.
        match Self::pair(&ctx, ea, eb) {
            Ok(pair) => match pair.opened(&nss).await {
                Ok(opened) => {
                    state.routes = val(opened.routes);
                    state.policies = val(opened.policies);
                }
                Err(e) => {
                    diagnostics::error(diags, &ctx_name(&id), &e);
                    return None;
                }
            },
            Err(e) => {
                diagnostics::error(diags, &ctx_name(&id), &e);
                return None;
            }
        }
        Some((state, Value::Null))
    }
}
