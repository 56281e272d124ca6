//! The provider: its schema, its configuration, and the map of resources and data sources.
//! Configuration turns the HCL `provider "homelab"` block into a [`Configured`] context (the
//! registry, the backends, the defaults) that every resource and data source reads.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Block, Description, NestedBlock, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{Diagnostics, DynamicDataSource, DynamicResource, Provider};

use crate::audit::{Actor, Client};
use crate::backend::BackendSet;
use crate::data_sources::cidr_allocation::CidrAllocationDataSource;
use crate::data_sources::reachability::ReachabilityDataSource;
use crate::diagnostics;
use crate::registry::etcd::EtcdStore;
use crate::registry::file::FileStore;
use crate::registry::{declared, Origin, Registry, Store, SystemClock};
use crate::resources::federation::FederationResource;
use crate::resources::instance::InstanceResource;
use crate::resources::names::NameBook;
use crate::context::{Configured, Shared};
use crate::schema::{attributes, known, number, optional, required, sensitive, string, string_list, Number};
use crate::settings::{self, BackendChoices, RawChoices, RawSettings, Settings};

/// The provider block as Terraform sends it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// Registry folder.
    pub home: Value<String>,
    /// Host-only pool.
    pub host_pool: Value<String>,
    /// Host-only subnet prefix.
    pub host_prefix: Value<Number>,
    /// Pod pool.
    pub pod_pool: Value<String>,
    /// Pod CIDR prefix.
    pub pod_prefix: Value<Number>,
    /// Service pool.
    pub service_pool: Value<String>,
    /// Service CIDR prefix.
    pub service_prefix: Value<Number>,
    /// Management network pool.
    pub mgmt_pool: Value<String>,
    /// Management network prefix.
    pub mgmt_prefix: Value<Number>,
    /// Reservation TTL.
    pub reservation_ttl: Value<String>,
    /// Default backend.
    pub default_backend: Value<String>,
    /// netns lab host namespace.
    pub netns_host: Value<String>,
    /// Vagrant executable.
    pub vagrant_bin: Value<String>,
    /// `virtualbox` or `libvirt`.
    pub hypervisor: Value<String>,
    /// `kvm` or `qemu`.
    pub libvirt_driver: Value<String>,
    /// The etcd store's block (absent: the file store in `home`).
    #[serde(with = "tf_provider::value::serde_as_vec")]
    pub etcd: Value<EtcdBlock>,
}

/// The provider block's `etcd { … }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EtcdBlock {
    /// Client URLs.
    pub endpoints: Value<Vec<Value<String>>>,
    /// Key prefix.
    pub prefix: Value<String>,
    /// CA file.
    pub ca_file: Value<String>,
    /// Client certificate.
    pub cert_file: Value<String>,
    /// Client key.
    pub key_file: Value<String>,
    /// User name.
    pub username: Value<String>,
    /// Password (sensitive).
    pub password: Value<String>,
}

impl EtcdBlock {
    fn raw(&self) -> settings::RawEtcd {
        settings::RawEtcd {
            endpoints: known(&self.endpoints).map(|l| l.iter().filter_map(known).collect()),
            prefix: known(&self.prefix),
            ca_file: known(&self.ca_file),
            cert_file: known(&self.cert_file),
            key_file: known(&self.key_file),
            username: known(&self.username),
            password: known(&self.password).map(secrecy::SecretString::from),
        }
    }

    fn any_unknown(&self) -> bool {
        self.endpoints.is_unknown()
            || known(&self.endpoints).is_some_and(|l| l.iter().any(|v| v.is_unknown()))
            || [&self.prefix, &self.ca_file, &self.cert_file, &self.key_file, &self.username, &self.password]
                .iter()
                .any(|v| v.is_unknown())
    }

    /// The block's schema.
    pub fn schema() -> Block {
        Block {
            version: 1,
            description: Description::markdown(
                "Keep the registry on an etcd v3 cluster instead of the file in `home`, so that several lab hosts share one address plan: \
                 every host's instances get pairwise disjoint networks, with the same reservations, saved-plan checks and audit log as the \
                 file registry. Every change is one etcd transaction guarded by revision compares; reservations live on etcd leases. \
                 `home` still holds each host's instance folders. See the README's \"A team's registry on etcd\".",
            ),
            attributes: attributes(vec![
                ("endpoints", required(string_list(), "Client URLs of the cluster's members, e.g. `[\"http://10.0.0.5:2379\", \"http://10.0.0.6:2379\"]` (`https://` with TLS). Requests go to any member and fail over to the others.")),
                ("prefix", optional(string(), "Key prefix of this registry, starting and ending with `/`. Default `/homelab/`. Hosts that share a prefix share one registry; another prefix is another registry.")),
                ("ca_file", optional(string(), "PEM file of the CA that signed the members' certificates (with `https://` endpoints).")),
                ("cert_file", optional(string(), "PEM client certificate, when the cluster is started with `--client-cert-auth` (with `key_file`).")),
                ("key_file", optional(string(), "PEM private key of `cert_file`.")),
                ("username", optional(string(), "etcd user, when the cluster has auth enabled (with `password`). Its role needs readwrite on the prefix.")),
                ("password", sensitive(optional(string(), "Password of `username` (sensitive: never shown or logged)."))),
            ]),
            ..Default::default()
        }
    }
}


/// A prefix setting: its whole value, or an error naming the attribute when it is not whole.
fn prefix(errors: &mut Vec<settings::SettingError>, attribute: &'static str, v: &Value<Number>) -> Option<i64> {
    match known(v)? {
        Number::Whole(n) => Some(n),
        Number::Other(x) => {
            errors.push(settings::SettingError {
                attribute,
                message: format!("{attribute} = {x} is not a whole number: it is a prefix length, from 0 to 32"),
            });
            None
        }
    }
}

impl ProviderConfig {
    /// The settings as given, and the errors found on the way (numbers that are not whole).
    fn raw(&self) -> (RawSettings, Vec<settings::SettingError>) {
        let mut errors = Vec::new();
        let raw = RawSettings {
            home: known(&self.home),
            host_pool: known(&self.host_pool),
            host_prefix: prefix(&mut errors, "host_prefix", &self.host_prefix),
            pod_pool: known(&self.pod_pool),
            pod_prefix: prefix(&mut errors, "pod_prefix", &self.pod_prefix),
            service_pool: known(&self.service_pool),
            service_prefix: prefix(&mut errors, "service_prefix", &self.service_prefix),
            mgmt_pool: known(&self.mgmt_pool),
            mgmt_prefix: prefix(&mut errors, "mgmt_prefix", &self.mgmt_prefix),
            reservation_ttl: known(&self.reservation_ttl),
            etcd: known(&self.etcd).as_ref().map(EtcdBlock::raw),
        };
        (raw, errors)
    }

    /// Validated settings, or every error found.
    fn settings(&self) -> Result<Settings, Vec<settings::SettingError>> {
        let (raw, mut errors) = self.raw();
        match settings::validate(&raw) {
            Ok(s) if errors.is_empty() => Ok(s),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }

    fn backend_choices(&self) -> Result<BackendChoices, Vec<settings::SettingError>> {
        settings::backend_choices(&RawChoices {
            default_backend: known(&self.default_backend),
            netns_host: known(&self.netns_host),
            vagrant_bin: known(&self.vagrant_bin),
            hypervisor: known(&self.hypervisor),
            libvirt_driver: known(&self.libvirt_driver),
        })
    }

    fn any_unknown(&self) -> bool {
        [
            &self.home,
            &self.host_pool,
            &self.pod_pool,
            &self.service_pool,
            &self.mgmt_pool,
            &self.reservation_ttl,
        ]
        .iter()
        .any(|v| v.is_unknown())
            || [&self.host_prefix, &self.pod_prefix, &self.service_prefix, &self.mgmt_prefix]
                .iter()
                .any(|v| v.is_unknown())
            || self.etcd.is_unknown() || known(&self.etcd).is_some_and(|b| b.any_unknown())
    }
}

/// The store of `settings`: the etcd store of its `etcd` block, else the file store in `home`.
pub fn open_store(settings: &Settings) -> Arc<dyn Store> {
    match &settings.etcd {
        Some(c) => Arc::new(EtcdStore::new(c.clone())),
        None => Arc::new(FileStore::new(settings.home.clone())),
    }
}

/// The registry of `settings` (see [`open_store`]), for `client`'s run `origin`.
fn open_registry(settings: &Settings, client: Client, origin: Origin) -> Registry {
    Registry::new(
        open_store(settings),
        settings.pools,
        settings.reservation_ttl,
        Arc::new(SystemClock),
        Actor::current(),
        client,
    )
    .with_origin(origin)
}

/// At validation (every command that reads the configuration, before anything changes): a
/// warning naming this workspace's creations that a killed apply began and never answered
/// (so no state holds them), and what converges them. Answered ones and killed destroys are
/// left out: the state may hold those, and the refresh tells (see `registry::interrupted`).
/// A `terraform destroy` whose state holds nothing never configures the provider (Terraform
/// 1.11 does not start it past validation), so this warning is all it can say.
fn warn_interrupted(diags: &mut Diagnostics, settings: &Settings, origin: &Origin) {
    if settings.etcd.is_none() && !FileStore::new(settings.home.clone()).registry_path().is_file() {
        return;
    }
    // Validation only warns: an etcd store that does not answer at once is left to the plan,
    // which says so with the endpoint.
    let mut quick = settings.clone();
    if let Some(c) = quick.etcd.as_mut() {
        c.timeout = std::time::Duration::from_secs(1);
    }
    let registry = open_registry(&quick, Client::provider(String::new()), origin.clone());
    let never_answered = |c: Option<&crate::registry::Creating>| c.filter(|c| c.word() == "interrupted").map(|c| c.since);
    let mut left: Vec<String> = match registry.interrupted() {
        Ok(list) => list
            .iter()
            .filter_map(|e| never_answered(e.creating.as_ref()).map(|since| format!("`{}` (since {})", e.name, crate::registry::rfc3339(since))))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the registry at validation");
            return;
        }
    };
    if let Ok(feds) = registry.interrupted_federations() {
        left.extend(
            feds.iter()
                .filter_map(|(id, r)| never_answered(r.creating.as_ref()).map(|since| format!("federation `{id}` (since {})", crate::registry::rfc3339(since)))),
        );
    }
    if left.is_empty() {
        return;
    }
    diagnostics::warning(
        diags,
        "An apply of this workspace was killed while creating".into(),
        format!(
            "{}: an apply of this workspace ({}) began them and was killed before they were made, so no state holds them. `terraform apply` adopts and finishes them; `terraform destroy` removes them when it destroys anything of this provider. With nothing of this provider in the state, `terraform-provider-homelab instances remove NAME --home {}` removes one (`terraform-provider-homelab registry check` lists them).",
            left.join(", "),
            origin.workspace,
            settings.home.display()
        ),
    );
}

/// Builds the backends from the provider's choices (the real host in the binary; fakes in tests).
pub type BackendFactory = dyn Fn(&Settings, &BackendChoices) -> Arc<dyn BackendSet> + Send + Sync;

/// The homelab provider.
pub struct HomelabProvider {
    shared: Arc<Shared>,
    factory: Arc<BackendFactory>,
}

impl HomelabProvider {
    /// The provider with the real backends of this host.
    pub fn new() -> Self {
        Self::with_backends(Arc::new(|s: &Settings, c: &BackendChoices| {
            crate::backend::set::host_backends(s, c)
        }))
    }

    /// The context its resources share (kept by `serve` to close the run).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The provider with backends from `factory`.
    pub fn with_backends(factory: Arc<BackendFactory>) -> Self {
        HomelabProvider {
            shared: Arc::new(Shared::default()),
            factory,
        }
    }

    /// The provider block's schema (also used by the docs generator).
    pub fn provider_schema() -> Schema {
        Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::markdown(
                    "The homelab provider runs Kubernetes home labs as isolated per-client instances on one host. \
                     Each instance gets its own host-only subnet, pod CIDR and service CIDR, pairwise disjoint across \
                     the host, recorded in the instance registry (`<home>/instances.json`) with an audit log \
                     (`<home>/events.jsonl`).",
                ),
                attributes: attributes(vec![
                    ("home", optional(string(), "Folder of the instance registry and event log (created when missing; a file there is refused). Default: `$HOMELAB_HOME`, else `~/.homelab`. Configurations that share a home share one registry, so their instances never overlap, and no two of them can hold an instance of the same name.")),
                    ("host_pool", optional(string(), "Pool of host-only subnets, a canonical IPv4 CIDR outside the special-purpose ranges (unspecified 0.0.0.0/8, loopback, link-local, multicast, reserved 240.0.0.0/4, broadcast). Default `192.168.56.0/21` (VirtualBox's default permitted host-only range: 8 subnets of /24).")),
                    ("host_prefix", optional(number(), "Prefix length of each instance subnet taken from `host_pool`. Default 24; at most 27 (nodes sit at .10 to .29).")),
                    ("pod_pool", optional(string(), "Pool of pod CIDRs, a canonical IPv4 CIDR. Default `10.240.0.0/12` (the /12 holding the well-known 10.244.0.0/16). Allocation starts at the slot holding 10.244.0.0 when the pool contains it, and wraps round.")),
                    ("pod_prefix", optional(number(), "Prefix length of each pod CIDR. Default 16 (16 instances in the default pool).")),
                    ("service_pool", optional(string(), "Pool of service CIDRs, a canonical IPv4 CIDR. Default `10.96.0.0/12`: the first instance gets 10.96.0.0/16, the second 10.97.0.0/16.")),
                    ("service_prefix", optional(number(), "Prefix length of each service CIDR. Default 16.")),
                    ("mgmt_pool", optional(string(), "Pool of per-instance management networks (Vagrant on libvirt only: each instance gets its own isolated management network). Default `172.30.0.0/16`.")),
                    ("mgmt_prefix", optional(number(), "Prefix length of each management network. Default 24.")),
                    ("reservation_ttl", optional(string(), "How long the networks shown in a plan stay reserved for it, as a duration (`30s`, `10m`, `24h`), longer than 0s and at most `720h` (30 days). Default `24h`. An expired reservation is free again; a saved plan applied after its networks were taken fails with the name of the new holder.")),
                    ("default_backend", optional(string(), "Backend of instances that do not set `backend`: `vagrant` (default) or `netns`.")),
                    ("netns_host", optional(string(), "Name of the network namespace that is the lab's host for the `netns` backend. 1 to 24 lowercase letters and digits; default `homelab`. Node namespaces are named `<netns_host>-<node>`. The root namespace is never changed.")),
                    ("vagrant_bin", optional(string(), "Vagrant executable. Default `vagrant` on `PATH`.")),
                    ("hypervisor", optional(string(), "Hypervisor of the `vagrant` backend: `virtualbox` (default) or `libvirt`.")),
                    ("libvirt_driver", optional(string(), "libvirt domain type: `kvm` (default) or `qemu` (software emulation, for hosts whose KVM cannot run a stock kernel).")),
                ]),
                blocks: [("etcd".to_string(), NestedBlock::Optional(EtcdBlock::schema()))].into_iter().collect(),
                ..Default::default()
            },
        }
    }
}

impl Default for HomelabProvider {
    fn default() -> Self {
        Self::new()
    }
}

fn settings_errors(diags: &mut Diagnostics, errors: Vec<settings::SettingError>) {
    for e in errors {
        diagnostics::error(diags, "", &e);
    }
}

#[async_trait]
impl Provider for HomelabProvider {
    type Config<'a> = ProviderConfig;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Self::provider_schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::Config<'a>) -> Option<()> {
        if !config.any_unknown() {
            match config.settings() {
                Ok(s) => {
                    warn_interrupted(diags, &s, self.shared.origin());
                    self.shared.declared.set_home(s.home, self.shared.origin());
                }
                Err(errors) => settings_errors(diags, errors),
            }
        }
        if let Err(errors) = config.backend_choices() {
            settings_errors(diags, errors);
        }
        Some(())
    }

    async fn configure<'a>(
        &self,
        diags: &mut Diagnostics,
        terraform_version: String,
        config: Self::Config<'a>,
    ) -> Option<()> {
        if config.any_unknown() {
            diags.root_error(
                "Provider configuration depends on unknown values",
                "The homelab provider needs its settings at plan time (they decide which networks are allocated). Use values known before apply.",
            );
            return None;
        }
        let settings = match config.settings() {
            Ok(s) => s,
            Err(errors) => {
                settings_errors(diags, errors);
                return Some(());
            }
        };
        if let Err(e) = settings::check_home(&settings.home) {
            settings_errors(diags, vec![e]);
            return Some(());
        }
        let choices = match config.backend_choices() {
            Ok(c) => c,
            Err(errors) => {
                settings_errors(diags, errors);
                return Some(());
            }
        };
        let origin = self.shared.origin().clone();
        let registry = open_registry(&settings, Client::provider(terraform_version), origin.clone())
            .with_declared(declared::load(&settings.home, &origin.workspace));
        let backends = (self.factory)(&settings, &choices);
        tracing::info!(home = %settings.home.display(), "homelab provider configured");
        self.shared.set(Configured {
            settings,
            choices,
            registry,
            backends,
            names: NameBook::new(),
            plan_failed: AtomicBool::new(false),
            swept: AtomicBool::new(false),
            host_networks_override: None,
        });
        Some(())
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        let mut m: HashMap<String, Box<dyn DynamicResource>> = HashMap::new();
        m.insert("instance".into(), Box::new(InstanceResource::new(self.shared.clone())));
        m.insert("federation".into(), Box::new(FederationResource::new(self.shared.clone())));
        Some(m)
    }

    fn get_ephemeral_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn tf_provider::DynamicEphemeralResource>>> {
        let mut m: HashMap<String, Box<dyn tf_provider::DynamicEphemeralResource>> = HashMap::new();
        m.insert("kubeconfig".into(), Box::new(crate::ephemeral_resources::kubeconfig::KubeconfigEphemeral::new(self.shared.clone())));
        Some(m)
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        let mut m: HashMap<String, Box<dyn DynamicDataSource>> = HashMap::new();
        m.insert(
            "cidr_allocation".into(),
            Box::new(CidrAllocationDataSource::new(self.shared.clone())),
        );
        m.insert(
            "reachability".into(),
            Box::new(ReachabilityDataSource::new(self.shared.clone())),
        );
        Some(m)
    }
}
