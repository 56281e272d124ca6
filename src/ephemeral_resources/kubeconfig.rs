//! `homelab_kubeconfig`: an instance's cluster credentials, opened when Terraform needs them
//! and never written to its state or plan files, for configuring `provider "kubernetes"` or
//! `"helm"` without any credential at rest in Terraform's files.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Block, Description, Schema};
use tf_provider::value::Value;
use tf_provider::{Diagnostics, EphemeralResource};

use crate::diagnostics::{self, Message};
use crate::federation::Side;
use crate::context::Shared;
use crate::registry::Status;
use crate::schema::{attributes, computed, required, sensitive, string};

/// Configuration in, credentials out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeconfigState {
    /// The instance (input).
    pub instance: Value<String>,
    /// The whole kubeconfig.
    pub kubeconfig: Value<String>,
    /// API server URL.
    pub endpoint: Value<String>,
    /// CA certificate (PEM).
    pub ca_certificate: Value<String>,
    /// Client certificate (PEM).
    pub client_certificate: Value<String>,
    /// Client key (PEM).
    pub client_key: Value<String>,
}

/// The ephemeral resource.
pub struct KubeconfigEphemeral {
    shared: Arc<Shared>,
}

impl KubeconfigEphemeral {
    /// On the provider's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        KubeconfigEphemeral { shared }
    }
}

fn refuse(diags: &mut Diagnostics, summary: String, detail: String) {
    diagnostics::error(diags, "", &Message { summary, detail, attribute: Some("instance") });
}

#[async_trait]
impl EphemeralResource for KubeconfigEphemeral {
    type State<'a> = KubeconfigState;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::markdown(
                    "The cluster credentials of an instance with a cluster (`backend = \"vagrant\"` with `provision = true`), \
                     read from its kubeconfig when Terraform needs them and never stored in the state or a plan file \
                     (Terraform 1.10+, OpenTofu 1.11+). Use it to configure `provider \"kubernetes\"` or `\"helm\"`: \
                     `host = ephemeral.homelab_kubeconfig.acme.endpoint`, `client_key = ephemeral.homelab_kubeconfig.acme.client_key`, …",
                ),
                attributes: attributes(vec![
                    ("instance", required(string(), "Name of the instance whose cluster it is.")),
                    ("kubeconfig", sensitive(computed(string(), "The whole kubeconfig (YAML), as the instance's first control plane wrote it."))),
                    ("endpoint", computed(string(), "The API server URL (`https://<first control plane>:6443`).")),
                    ("ca_certificate", computed(string(), "The cluster's CA certificate (PEM).")),
                    ("client_certificate", computed(string(), "The admin client certificate (PEM).")),
                    ("client_key", sensitive(computed(string(), "The admin client key (PEM)."))),
                ]),
                ..Default::default()
            },
        })
    }

    async fn open<'a>(&self, diags: &mut Diagnostics, config: KubeconfigState) -> Option<KubeconfigState> {
        let ctx = self.shared.get(diags)?;
        let Value::Value(name) = config.instance.clone() else {
            refuse(diags, "`instance` must be known to open homelab_kubeconfig".into(), "Terraform opens it once the instance's name is known.".into());
            return None;
        };
        let entry = match ctx.registry.get(&name) {
            Ok(Some(e)) if e.status == Status::Allocated => e,
            Ok(_) => {
                refuse(diags, format!("No instance `{name}`"), format!("`{name}` is not an instance of the registry ({}). Refer to it as `homelab_instance.{name}.name` so that it is created first.", ctx.registry.store().location()));
                return None;
            }
            Err(e) => {
                diagnostics::error(diags, &format!("homelab_kubeconfig {name:?}"), &e);
                return None;
            }
        };
        let side = match Side::from_entry(entry, ctx.backends.as_ref(), &ctx.settings.home) {
            Ok(s) => s,
            Err(e) => {
                refuse(diags, format!("homelab_kubeconfig {name:?}: cannot describe the instance"), e.to_string());
                return None;
            }
        };
        let Some(path) = side.kubeconfig.clone() else {
            refuse(diags, format!("Instance `{name}` has no cluster"), "Only instances with `backend = \"vagrant\"` and `provision = true` run Kubernetes; netns instances have nodes but no cluster.".into());
            return None;
        };
        let creds = match crate::k8s::credentials::read(&path) {
            Ok(c) => c,
            Err(e) => {
                refuse(diags, format!("homelab_kubeconfig {name:?}: the instance's kubeconfig is not usable"), e.to_string());
                return None;
            }
        };
        Some(KubeconfigState {
            instance: Value::Value(name),
            kubeconfig: Value::Value(creds.kubeconfig),
            endpoint: Value::Value(creds.endpoint),
            ca_certificate: Value::Value(creds.ca_certificate),
            client_certificate: Value::Value(creds.client_certificate),
            client_key: Value::Value(creds.client_key),
        })
    }
}
