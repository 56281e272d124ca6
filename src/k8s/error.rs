//! Errors of the Kubernetes side of federation: each names the kubeconfig, or the namespace and
//! policy and what was being done to it, and keeps the `kube` error as its source.

use std::fmt;
use std::path::PathBuf;

use kube::config::KubeconfigError;
use kube::core::ErrorResponse;
use thiserror::Error;

/// What was being done to a NetworkPolicy when the API request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Server-side apply (create or update) of the policy.
    Apply,
    /// Deletion of the policy.
    Delete,
    /// Reading the policy back (drift detection).
    Read,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Apply => "apply (server-side)",
            Action::Delete => "delete",
            Action::Read => "read",
        })
    }
}

/// A failure talking to, or getting ready to talk to, an instance's Kubernetes API.
#[derive(Debug, Error)]
pub enum K8sError {
    /// The kubeconfig file could not be read or is not a kubeconfig (missing, unreadable, bad YAML).
    #[error("could not read kubeconfig {}: {}", path.display(), read_cause(source))]
    KubeconfigUnreadable {
        /// The kubeconfig file.
        path: PathBuf,
        /// What `kube` reported.
        #[source]
        source: KubeconfigError,
    },

    /// The kubeconfig was read but does not describe a usable cluster (no current context, no or
    /// bad server URL, undecodable certificate data).
    #[error("kubeconfig {} does not describe a usable cluster: {source}", path.display())]
    KubeconfigUnusable {
        /// The kubeconfig file.
        path: PathBuf,
        /// What `kube` reported.
        #[source]
        source: KubeconfigError,
    },

    /// The kubeconfig lacks a value a credential needs (its current context names no cluster or
    /// user, a field is missing, or its data is not base64).
    #[error("kubeconfig {}: {why}", path.display())]
    KubeconfigIncomplete {
        /// The kubeconfig file.
        path: PathBuf,
        /// What is missing or wrong (never a secret value).
        why: String,
    },

    /// A client could not be built from an otherwise valid kubeconfig (TLS setup: a CA or client
    /// certificate that does not parse).
    #[error("could not build a Kubernetes client from kubeconfig {}: {source}", path.display())]
    Client {
        /// The kubeconfig file.
        path: PathBuf,
        /// What `kube` reported.
        #[source]
        source: kube::Error,
    },

    /// The API server answered with an error status (403 forbidden, 404 missing namespace,
    /// 409 conflict, 422 invalid object, 5xx).
    #[error(
        "could not {action} NetworkPolicy {namespace}/{name}: the API server answered {} {}: {}",
        source.code, source.reason, source.message
    )]
    Api {
        /// What was attempted.
        action: Action,
        /// Namespace of the policy.
        namespace: String,
        /// Name of the policy.
        name: String,
        /// The API server's status (code, reason, message).
        #[source]
        source: ErrorResponse,
    },

    /// The request got no usable answer: connection refused or timed out, TLS failure, or a
    /// response that could not be read. Usually the cluster is down or the kubeconfig's server
    /// address is not reachable from here.
    #[error("could not {action} NetworkPolicy {namespace}/{name}: request to the API server failed: {source}")]
    Request {
        /// What was attempted.
        action: Action,
        /// Namespace of the policy.
        namespace: String,
        /// Name of the policy.
        name: String,
        /// What `kube` reported.
        #[source]
        source: kube::Error,
    },
}

/// The cause of an unreadable kubeconfig without `kube`'s own repetition of the path.
fn read_cause(err: &KubeconfigError) -> String {
    match err {
        KubeconfigError::ReadConfig(io, _) => io.to_string(),
        other => other.to_string(),
    }
}

impl K8sError {
    /// Sorts a failed request into [`K8sError::Api`] (the server answered with an error status) or
    /// [`K8sError::Request`] (no usable answer).
    pub(crate) fn request(action: Action, namespace: &str, name: &str, err: kube::Error) -> Self {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        match err {
            kube::Error::Api(source) => K8sError::Api {
                action,
                namespace,
                name,
                source,
            },
            source => K8sError::Request {
                action,
                namespace,
                name,
                source,
            },
        }
    }

    /// The HTTP status the API server answered with, for [`K8sError::Api`].
    pub fn status_code(&self) -> Option<u16> {
        match self {
            K8sError::Api { source, .. } => Some(source.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_names_action_namespace_name_and_status() {
        let err = K8sError::request(
            Action::Delete,
            "default",
            "homelab-federation-acme",
            kube::Error::Api(ErrorResponse {
                status: "Failure".into(),
                message: "networkpolicies is forbidden".into(),
                reason: "Forbidden".into(),
                code: 403,
            }),
        );
        assert_eq!(err.status_code(), Some(403));
        assert_eq!(
            err.to_string(),
            "could not delete NetworkPolicy default/homelab-federation-acme: \
             the API server answered 403 Forbidden: networkpolicies is forbidden"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn non_status_failure_is_a_request_error() {
        let err = K8sError::request(
            Action::Read,
            "lab",
            "homelab-federation-acme",
            kube::Error::LinesCodecMaxLineLengthExceeded,
        );
        assert!(matches!(
            err,
            K8sError::Request {
                action: Action::Read,
                ..
            }
        ));
        assert_eq!(err.status_code(), None);
        assert!(err.to_string().starts_with(
            "could not read NetworkPolicy lab/homelab-federation-acme: request to the API server failed"
        ));
    }
}
