//! An instance's cluster credentials, read from its kubeconfig for the ephemeral
//! `homelab_kubeconfig` (so that other providers can be configured without any credential in
//! Terraform's state or plan files). The current context's cluster and user, decoded to PEM.

use std::path::Path;

use base64::Engine;
use kube::config::Kubeconfig;
use secrecy::ExposeSecret;

use super::K8sError;

/// What a Kubernetes client needs, as PEM text and URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The whole kubeconfig, as written by the instance.
    pub kubeconfig: String,
    /// The API server URL.
    pub endpoint: String,
    /// The cluster's CA certificate (PEM).
    pub ca_certificate: String,
    /// The client certificate (PEM).
    pub client_certificate: String,
    /// The client key (PEM).
    pub client_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, nor the kubeconfig that holds it.
        f.debug_struct("Credentials").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// The credentials of the kubeconfig at `path`.
pub fn read(path: &Path) -> Result<Credentials, K8sError> {
    let text = std::fs::read_to_string(path).map_err(|e| K8sError::KubeconfigIncomplete {
        path: path.into(),
        why: format!("cannot read it: {e}"),
    })?;
    parse(&text, path)
}

/// The credentials in `text` (the content of `path`, named in errors).
pub fn parse(text: &str, path: &Path) -> Result<Credentials, K8sError> {
    let incomplete = |why: String| K8sError::KubeconfigIncomplete { path: path.into(), why };
    let config = Kubeconfig::from_yaml(text).map_err(|source| K8sError::KubeconfigUnreadable { path: path.into(), source })?;
    let context_name = config
        .current_context
        .clone()
        .or_else(|| config.contexts.first().map(|c| c.name.clone()))
        .ok_or_else(|| incomplete("it has no context".into()))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| incomplete(format!("no context `{context_name}`")))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| incomplete(format!("no cluster `{}`", context.cluster)))?;
    let user_name = context.user.clone().ok_or_else(|| incomplete(format!("context `{context_name}` names no user")))?;
    let user = config
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.clone())
        .ok_or_else(|| incomplete(format!("no user `{user_name}`")))?;
    let decode = |field: &str, data: Option<&str>| -> Result<String, K8sError> {
        let data = data.ok_or_else(|| incomplete(format!("no `{field}`")))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| incomplete(format!("`{field}` is not base64")))?;
        String::from_utf8(bytes).map_err(|_| incomplete(format!("`{field}` is not PEM text")))
    };
    Ok(Credentials {
        kubeconfig: text.to_string(),
        endpoint: cluster.server.clone().ok_or_else(|| incomplete(format!("cluster `{}` has no server", context.cluster)))?,
        ca_certificate: decode("certificate-authority-data", cluster.certificate_authority_data.as_deref())?,
        client_certificate: decode("client-certificate-data", user.client_certificate_data.as_deref())?,
        client_key: decode("client-key-data", user.client_key_data.as_ref().map(|k| k.expose_secret()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn kubeconfig(key: Option<&str>) -> String {
        let key = key.map(|k| format!("    client-key-data: {}\n", b64(k))).unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: admin@acme\nclusters:\n- name: acme\n  cluster:\n    server: https://192.168.56.10:6443\n    certificate-authority-data: {}\ncontexts:\n- name: admin@acme\n  context:\n    cluster: acme\n    user: admin\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n{key}",
            b64("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"),
            b64("-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"),
        )
    }

    #[test]
    fn the_current_contexts_cluster_and_user_decoded() {
        let text = kubeconfig(Some("-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----\n"));
        let c = parse(&text, Path::new("/k")).unwrap();
        assert_eq!(c.endpoint, "https://192.168.56.10:6443");
        assert!(c.ca_certificate.contains("\nCA\n") && c.client_certificate.contains("\nCLIENT\n"));
        assert!(c.client_key.contains("\nKEY\n"));
        assert_eq!(c.kubeconfig, text);
        assert!(!format!("{c:?}").contains("KEY"), "Debug shows the key");
    }

    #[test]
    fn a_missing_field_is_named_and_no_secret_is_shown() {
        let err = parse(&kubeconfig(None), Path::new("/k")).unwrap_err().to_string();
        assert!(err.contains("/k") && err.contains("client-key-data"), "{err}");
        let err = parse("apiVersion: v1\nkind: Config\nclusters: []\n", Path::new("/k")).unwrap_err().to_string();
        assert!(err.contains("no context"), "{err}");
    }
}
