//! [`Policies`]: apply, delete and look up federation NetworkPolicies on one cluster, through an
//! injected `kube::Client`.

use std::path::Path;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::error::{Action, K8sError};
use super::policy::{network_policy, PolicySpec};

/// Field manager of every server-side apply this provider makes.
pub const FIELD_MANAGER: &str = "terraform-provider-homelab";

/// The federation policies of one instance's cluster.
#[derive(Clone)]
pub struct Policies {
    client: Client,
}

impl Policies {
    /// Policies on the cluster behind `client` (a real client, or one over a fake API in tests).
    pub fn new(client: Client) -> Self {
        Policies { client }
    }

    /// Policies on the cluster described by the kubeconfig at `path` (its current context).
    ///
    /// Builds the client without contacting the cluster; the first request does that. Async
    /// because `kube` loads configuration asynchronously, and it must run inside a Tokio runtime
    /// (the client spawns its request buffer).
    pub async fn from_kubeconfig(path: &Path) -> Result<Policies, K8sError> {
        let kubeconfig =
            Kubeconfig::read_from(path).map_err(|source| K8sError::KubeconfigUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| K8sError::KubeconfigUnusable {
                path: path.to_path_buf(),
                source,
            })?;
        let client = Client::try_from(config).map_err(|source| K8sError::Client {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Policies::new(client))
    }

    /// Creates or updates the policy for `spec` with server-side apply, field manager
    /// [`FIELD_MANAGER`], forced.
    ///
    /// Forced because the provider is the only intended owner of `homelab-federation-*` objects:
    /// a conflict means someone changed a field we set out of band (`kubectl edit`, another
    /// apply), which is drift that this apply exists to repair. Unforced, the server would answer
    /// 409 Conflict and the repair would fail. Fields we do not set stay with their owners.
    pub async fn apply(&self, spec: &PolicySpec) -> Result<(), K8sError> {
        let name = spec.name();
        let policy = network_policy(spec);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api(&spec.namespace)
            .patch(&name, &params, &Patch::Apply(&policy))
            .await
            .map_err(|err| K8sError::request(Action::Apply, &spec.namespace, &name, err))?;
        tracing::info!(namespace = %spec.namespace, %name, "applied federation NetworkPolicy");
        Ok(())
    }

    /// Deletes the policy `namespace/name`. A policy (or namespace) already gone is success:
    /// destroy tolerates pieces removed out of band.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<(), K8sError> {
        match self
            .api(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                tracing::info!(%namespace, %name, "deleted federation NetworkPolicy");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::debug!(%namespace, %name, "federation NetworkPolicy already gone");
                Ok(())
            }
            Err(err) => Err(K8sError::request(Action::Delete, namespace, name, err)),
        }
    }

    /// The policy `namespace/name` as the cluster has it, or `None` when it (or its namespace)
    /// does not exist.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<NetworkPolicy>, K8sError> {
        match self.api(namespace).get(name).await {
            Ok(policy) => Ok(Some(policy)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(err) => Err(K8sError::request(Action::Read, namespace, name, err)),
        }
    }

    /// Whether the policy `namespace/name` exists. `false` makes the next plan re-create it.
    pub async fn exists(&self, namespace: &str, name: &str) -> Result<bool, K8sError> {
        Ok(self.get(namespace, name).await?.is_some())
    }

    fn api(&self, namespace: &str) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("default_namespace", &self.client.default_namespace())
            .finish_non_exhaustive()
    }
}
