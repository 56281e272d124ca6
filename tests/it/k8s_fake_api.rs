//! The Kubernetes side of federation against a fake API server. No API server can run here, so
//! kube's `tower-test` mock stands in for the cluster: each test serves the one request that
//! `homelab::k8s::Policies` should send, asserts it exactly (method, path, query, content type,
//! body) and answers the way an API server would, then checks what `Policies` made of the answer.
//! Also: loading a client from kubeconfig files the tests write.

use std::io::Write;
use std::path::Path;

use homelab::k8s::{Action, K8sError, Policies, PolicySpec};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock;

const NAMESPACE: &str = "lab";
const POLICY: &str = "homelab-federation-globex";
const POLICY_PATH: &str =
    "/apis/networking.k8s.io/v1/namespaces/lab/networkpolicies/homelab-federation-globex";

/// The policy acme's cluster gets when acme is federated with globex.
fn acme_admits_globex() -> PolicySpec {
    PolicySpec {
        instance: "acme".into(),
        peer: "globex".into(),
        namespace: NAMESPACE.into(),
        peer_pod_cidr: "10.245.0.0/16".parse().unwrap(),
        peer_subnet: "192.168.57.0/24".parse().unwrap(),
        own_pod_cidr: "10.244.0.0/16".parse().unwrap(),
        own_subnet: "192.168.56.0/24".parse().unwrap(),
    }
}

/// What the fake API server was asked.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    /// Query pairs, sorted so the comparison does not depend on their order on the wire.
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// A `Policies` on a fake cluster that answers exactly one request with `status` and `answer`,
/// and the task that returns what it was asked. The fake hangs up after that one answer, so a
/// second request fails instead of hanging.
fn fake_cluster_answering(status: StatusCode, answer: Value) -> (Policies, JoinHandle<Seen>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let (request, respond) = handle
            .next_request()
            .await
            .expect("Policies sent no request to the fake API");
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.expect("request body").to_vec();
        let mut query: Vec<(String, String)> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_string(), value.to_string())
            })
            .collect();
        query.sort();
        respond.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        Seen {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string()),
            body,
        }
    });
    (Policies::new(kube::Client::new(service, "default")), server)
}

/// A `metav1.Status` body as the API server sends it with an error code.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "details": { "name": POLICY, "group": "networking.k8s.io", "kind": "networkpolicies" },
        "code": code,
    })
}

/// The policy as the API server returns it after apply or on get.
fn stored_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": POLICY,
            "namespace": NAMESPACE,
            "uid": "0b5c1f4e-0000-4000-8000-000000000001",
            "resourceVersion": "4242",
            "labels": { "app.kubernetes.io/managed-by": "terraform-provider-homelab" },
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{ "from": [
                { "ipBlock": { "cidr": "10.245.0.0/16" } },
                { "ipBlock": { "cidr": "192.168.57.0/24" } },
                { "ipBlock": { "cidr": "10.244.0.0/16" } },
                { "ipBlock": { "cidr": "192.168.56.0/24" } },
            ] }],
        },
    })
}

fn forbidden() -> Value {
    status(
        403,
        "Forbidden",
        "networkpolicies.networking.k8s.io \"homelab-federation-globex\" is forbidden: \
         User \"lab-viewer\" cannot patch resource \"networkpolicies\" in namespace \"lab\"",
    )
}

/// Asserts `err` is the API server's `code`, for `action` on lab/homelab-federation-globex, and
/// that its message names the policy.
fn assert_api_error(err: K8sError, action: Action, code: u16) {
    let message = err.to_string();
    assert!(
        message.contains("lab/homelab-federation-globex"),
        "error does not name namespace/name: {message}"
    );
    assert!(
        message.contains(&code.to_string()),
        "error does not name the status: {message}"
    );
    match err {
        K8sError::Api {
            action: got,
            namespace,
            name,
            source,
        } => {
            assert_eq!(got, action);
            assert_eq!(namespace, NAMESPACE);
            assert_eq!(name, POLICY);
            assert_eq!(source.code, code);
        }
        other => panic!("expected K8sError::Api, got {other:?}"),
    }
}

#[tokio::test]
async fn apply_sends_forced_server_side_apply_to_fake_api() {
    let (policies, server) = fake_cluster_answering(StatusCode::OK, stored_policy());

    policies.apply(&acme_admits_globex()).await.expect("apply");

    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, POLICY_PATH);
    assert_eq!(
        seen.query,
        [
            (
                "fieldManager".to_string(),
                "terraform-provider-homelab".to_string()
            ),
            ("force".to_string(), "true".to_string()),
        ]
    );
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        seen.json(),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "homelab-federation-globex",
                "namespace": "lab",
                "labels": {
                    "app.kubernetes.io/managed-by": "terraform-provider-homelab",
                    "homelab.dev/instance": "acme",
                    "homelab.dev/peer": "globex",
                },
                "annotations": { "homelab.dev/federation": "acme+globex" },
            },
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress"],
                "ingress": [{ "from": [
                    { "ipBlock": { "cidr": "10.245.0.0/16" } },
                    { "ipBlock": { "cidr": "192.168.57.0/24" } },
                    { "ipBlock": { "cidr": "10.244.0.0/16" } },
                    { "ipBlock": { "cidr": "192.168.56.0/24" } },
                ] }],
            },
        })
    );
}

#[tokio::test]
async fn apply_forbidden_by_fake_api_names_namespace_and_name() {
    let (policies, server) = fake_cluster_answering(StatusCode::FORBIDDEN, forbidden());

    let err = policies.apply(&acme_admits_globex()).await.unwrap_err();

    assert_eq!(server.await.unwrap().method, Method::PATCH);
    assert_api_error(err, Action::Apply, 403);
}

#[tokio::test]
async fn delete_sends_delete_to_fake_api() {
    let (policies, server) = fake_cluster_answering(StatusCode::OK, status(200, "", "deleted"));

    policies.delete(NAMESPACE, POLICY).await.expect("delete");

    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(seen.path, POLICY_PATH);
    assert_eq!(seen.query, []);
}

#[tokio::test]
async fn delete_accepts_fake_api_returning_the_deleted_object() {
    let (policies, server) = fake_cluster_answering(StatusCode::OK, stored_policy());

    policies.delete(NAMESPACE, POLICY).await.expect("delete");

    assert_eq!(server.await.unwrap().method, Method::DELETE);
}

#[tokio::test]
async fn delete_of_policy_already_gone_from_fake_api_is_success() {
    let not_found = status(
        404,
        "NotFound",
        "networkpolicies.networking.k8s.io \"homelab-federation-globex\" not found",
    );
    let (policies, server) = fake_cluster_answering(StatusCode::NOT_FOUND, not_found);

    policies
        .delete(NAMESPACE, POLICY)
        .await
        .expect("a policy already gone is deleted");

    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(seen.path, POLICY_PATH);
}

#[tokio::test]
async fn delete_forbidden_by_fake_api_names_namespace_and_name() {
    let (policies, server) = fake_cluster_answering(StatusCode::FORBIDDEN, forbidden());

    let err = policies.delete(NAMESPACE, POLICY).await.unwrap_err();

    assert_eq!(server.await.unwrap().method, Method::DELETE);
    assert_api_error(err, Action::Delete, 403);
}

#[tokio::test]
async fn exists_maps_fake_api_200_to_true() {
    let (policies, server) = fake_cluster_answering(StatusCode::OK, stored_policy());

    assert!(policies.exists(NAMESPACE, POLICY).await.expect("exists"));

    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, POLICY_PATH);
    assert_eq!(seen.query, []);
}

#[tokio::test]
async fn exists_maps_fake_api_404_to_false() {
    let not_found = status(
        404,
        "NotFound",
        "networkpolicies.networking.k8s.io \"homelab-federation-globex\" not found",
    );
    let (policies, server) = fake_cluster_answering(StatusCode::NOT_FOUND, not_found);

    assert!(!policies.exists(NAMESPACE, POLICY).await.expect("exists"));

    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, POLICY_PATH);
}

#[tokio::test]
async fn exists_forbidden_by_fake_api_names_namespace_and_name() {
    let (policies, server) = fake_cluster_answering(StatusCode::FORBIDDEN, forbidden());

    let err = policies.exists(NAMESPACE, POLICY).await.unwrap_err();

    assert_eq!(server.await.unwrap().method, Method::GET);
    assert_api_error(err, Action::Read, 403);
}

#[tokio::test]
async fn exists_on_fake_api_that_hung_up_is_a_request_error() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    drop(handle);
    let policies = Policies::new(kube::Client::new(service, "default"));

    let err = policies.exists(NAMESPACE, POLICY).await.unwrap_err();

    assert!(
        matches!(&err, K8sError::Request { action: Action::Read, namespace, name, .. }
            if namespace == NAMESPACE && name == POLICY),
        "expected K8sError::Request for the read, got {err:?}"
    );
    assert!(
        err.to_string().contains("lab/homelab-federation-globex"),
        "{err}"
    );
}

// ---- kubeconfig files ----

/// A throwaway self-signed CA certificate (its key was never kept), base64 of the PEM, as a
/// kubeconfig's `certificate-authority-data` holds it.
const FAKE_CA_DATA: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJsakNDQVR1Z0F3SUJBZ0lVRE1hbGxxY0h1dENZbUtZYjFIb3FxRjROWm1zd0NnWUlLb1pJemowRUF3SXcKSHpFZE1Cc0dBMVVFQXd3VWFHOXRaV3hoWWkxMFpYTjBMV1poYTJVdFkyRXdJQmNOTWpZeE1USTJNRFUwTXpFeApXaGdQTWpFeU5qRXhNREl3TlRRek1URmFNQjh4SFRBYkJnTlZCQU1NRkdodmJXVnNZV0l0ZEdWemRDMW1ZV3RsCkxXTmhNRmt3RXdZSEtvWkl6ajBDQVFZSUtvWkl6ajBEQVFjRFFnQUVJb3dlZG1sTUVmbnBQN01tbTFzKzVyaUYKaXhoQWVLRVViZFUwSzBheEM2akZ2MGxpMm94eS9zYWtGY0lCc3NsSiszTlFqN1FITlh3bUt3YW42Y1lWL2FOVApNRkV3SFFZRFZSME9CQllFRkhCZGJtUVJIR3QwY0h0S1pEQ1R3d05SVkRvaE1COEdBMVVkSXdRWU1CYUFGSEJkCmJtUVJIR3QwY0h0S1pEQ1R3d05SVkRvaE1BOEdBMVVkRXdFQi93UUZNQU1CQWY4d0NnWUlLb1pJemowRUF3SUQKU1FBd1JnSWhBT1NWM1VkbkcrMFF0MWw4aGcwRkVCaGZzcUxpZUhCODI3ODNZM2JXT0NCZkFpRUFreUhpdEFxVwoxNHUrWStTMnQvVE95VjdCd01WaEpxOE5CZEc0RnByQmRnOD0KLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=";

/// base64 of a PEM block whose content is not a certificate.
const GARBAGE_CA_DATA: &str =
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkFBQUEKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=";

/// A kubeconfig in the shape a Vagrant instance's k3s writes, with the server rewritten to the
/// VM's host-only address; nothing listens there, and building the client must not try.
fn kubeconfig(ca_data: &str, current_context: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: acme
  cluster:
    server: https://192.168.56.10:6443
    certificate-authority-data: {ca_data}
users:
- name: acme-admin
  user:
    token: fake-token-for-tests
contexts:
- name: acme
  context:
    cluster: acme
    user: acme-admin
current-context: {current_context}
"
    )
}

fn write_kubeconfig(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write kubeconfig");
    path
}

#[tokio::test]
async fn from_kubeconfig_builds_client_for_fake_cluster_without_contacting_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_kubeconfig(dir.path(), &kubeconfig(FAKE_CA_DATA, "acme"));

    // Nothing listens at 192.168.56.10 and nothing may be sent there: a client that connected
    // eagerly would fail or hang here instead of returning.
    let built = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Policies::from_kubeconfig(&path),
    )
    .await
    .expect("building the client returned without contacting the cluster");

    built.expect("client from a valid kubeconfig");
}

#[tokio::test]
async fn from_kubeconfig_on_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acme").join("kubeconfig");

    let err = Policies::from_kubeconfig(&path).await.unwrap_err();

    assert!(
        matches!(err, K8sError::KubeconfigUnreadable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error does not name {}: {err}",
        path.display()
    );
}

#[tokio::test]
async fn from_kubeconfig_without_the_current_context_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_kubeconfig(dir.path(), &kubeconfig(FAKE_CA_DATA, "no-such-context"));

    let err = Policies::from_kubeconfig(&path).await.unwrap_err();

    assert!(
        matches!(err, K8sError::KubeconfigUnusable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn from_kubeconfig_with_ca_data_that_is_no_certificate_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_kubeconfig(dir.path(), &kubeconfig(GARBAGE_CA_DATA, "acme"));

    let err = Policies::from_kubeconfig(&path).await.unwrap_err();

    assert!(matches!(err, K8sError::Client { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
