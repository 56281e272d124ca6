//! NetworkPolicies for federation, through the `kube` crate on an injected client.
//!
//! Federating instances A and B puts, in each listed namespace of A's cluster, a NetworkPolicy
//! `homelab-federation-B` that admits ingress from B's pod CIDR and subnet, and from A's own pod
//! CIDR and subnet (and the mirror image in B's cluster). This module builds those objects,
//! applies them with server-side apply, deletes them, and says whether they still exist, so the
//! federation resource can repair drift.
//!
//! The Kubernetes client is injected: [`Policies::from_kubeconfig`] builds a real one from an
//! instance's kubeconfig, and tests hand [`Policies::new`] a client over a fake API service. The
//! module never imports `tf_provider`; the federation resource maps its errors to diagnostics.
//!
//! # What a federation policy does to a namespace
//!
//! NetworkPolicies are allow-lists that add up. A policy whose `podSelector` is `{}` and whose
//! `policyTypes` is `[Ingress]` makes every pod of its namespace ingress-isolated: from then on a
//! pod admits only what some policy of the namespace allows. So the federation policy admits,
//! besides the peer, everything that could reach those pods before: the instance's own pods
//! (its pod CIDR) and its own nodes and host gateway (its subnet). The instance has no route to
//! anything else, so in a namespace with no other policy nothing that worked before stops
//! working. In a namespace that your own policies already restrict (a default deny), the union
//! of the policies applies: the federation policy then also admits the cluster's own pods and
//! nodes into every pod of the namespace; list only namespaces where that is what you want.
//!
//! # Layout
//! - [`policy`] is the pure part, [`PolicySpec`] and the [`NetworkPolicy`] built from it.
//! - [`client`] holds [`Policies`]: apply, delete and exists on one cluster.
//! - [`error`] holds [`K8sError`], what went wrong and to which policy or kubeconfig.
//! - [`credentials`] reads an instance's cluster credentials from its kubeconfig (for the
//!   ephemeral `homelab_kubeconfig`).
//!
//! [`NetworkPolicy`]: k8s_openapi::api::networking::v1::NetworkPolicy

pub mod client;
pub mod credentials;
pub mod error;
pub mod policy;

pub use client::{Policies, FIELD_MANAGER};
pub use error::{Action, K8sError};
pub use policy::{
    network_policy, policy_name, PolicySpec, FEDERATION_ANNOTATION, INSTANCE_LABEL, MANAGED_BY,
    MANAGED_BY_LABEL, PEER_LABEL, POLICY_NAME_PREFIX,
};
