//! The federation NetworkPolicy as data: what one instance's cluster admits from its peer, built
//! as a typed `k8s-openapi` object without any I/O.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// Prefix of every federation policy's name; the peer's instance name follows it.
pub const POLICY_NAME_PREFIX: &str = "homelab-federation-";

/// The well-known label saying which tool manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Value of [`MANAGED_BY_LABEL`] on every object this provider makes.
pub const MANAGED_BY: &str = "terraform-provider-homelab";

/// Label naming the instance whose cluster holds the policy.
pub const INSTANCE_LABEL: &str = "homelab.dev/instance";

/// Label naming the peer instance the policy admits traffic from.
pub const PEER_LABEL: &str = "homelab.dev/peer";

/// Annotation holding the federation's id, `<a>+<b>` with the names sorted (the Terraform id of
/// the `homelab_federation` resource). An annotation, not a label: `+` is not allowed in label
/// values.
pub const FEDERATION_ANNOTATION: &str = "homelab.dev/federation";

/// One federation policy: in `instance`'s cluster, in `namespace`, admit ingress from `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The instance whose cluster gets the policy.
    pub instance: String,
    /// The federated peer instance; the policy is named after it ([`policy_name`]).
    pub peer: String,
    /// Namespace of `instance`'s cluster that gets the policy.
    pub namespace: String,
    /// The peer's pod CIDR: traffic from the peer's pods when it keeps its pod source address.
    pub peer_pod_cidr: Ipv4Net,
    /// The peer's host-only subnet: its nodes, and pod traffic masqueraded to node addresses.
    pub peer_subnet: Ipv4Net,
    /// `instance`'s own pod CIDR: its pods keep reaching each other.
    pub own_pod_cidr: Ipv4Net,
    /// `instance`'s own host-only subnet: its nodes (kubelet probes, node-local traffic, the
    /// host's gateway) keep reaching its pods.
    pub own_subnet: Ipv4Net,
}

impl PolicySpec {
    /// The policy's object name, `homelab-federation-<peer>`.
    pub fn name(&self) -> String {
        policy_name(&self.peer)
    }

    /// The federation id `<a>+<b>`, names sorted, the same whichever side of the pair this is.
    pub fn federation_id(&self) -> String {
        let (a, b) = if self.instance <= self.peer {
            (&self.instance, &self.peer)
        } else {
            (&self.peer, &self.instance)
        };
        format!("{a}+{b}")
    }
}

/// Name of the policy that admits `peer`: `homelab-federation-<peer>`.
pub fn policy_name(peer: &str) -> String {
    format!("{POLICY_NAME_PREFIX}{peer}")
}

/// The NetworkPolicy for `spec`: every pod of the namespace (`podSelector: {}`), ingress only,
/// one rule admitting the peer's pod CIDR and subnet, and the instance's own pod CIDR and subnet
/// (a policy that selects a pod isolates it: without them, federating would cut the namespace
/// off from its own cluster; see the module docs).
///
/// CIDRs are written in canonical form (host bits cleared): API servers with strict CIDR
/// validation reject `10.42.0.1/16`.
pub fn network_policy(spec: &PolicySpec) -> NetworkPolicy {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (INSTANCE_LABEL.to_string(), spec.instance.clone()),
        (PEER_LABEL.to_string(), spec.peer.clone()),
    ]);
    let annotations = BTreeMap::from([(FEDERATION_ANNOTATION.to_string(), spec.federation_id())]);
    let from = [spec.peer_pod_cidr, spec.peer_subnet, spec.own_pod_cidr, spec.own_subnet]
        .iter()
        .map(|net| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: net.trunc().to_string(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(spec.name()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: LabelSelector::default(),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: None,
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> PolicySpec {
        PolicySpec {
            instance: "globex".into(),
            peer: "acme".into(),
            namespace: "default".into(),
            peer_pod_cidr: "10.244.0.0/16".parse().unwrap(),
            peer_subnet: "192.168.56.0/24".parse().unwrap(),
            own_pod_cidr: "10.245.0.0/16".parse().unwrap(),
            own_subnet: "192.168.57.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn policy_name_prefixes_the_peer() {
        assert_eq!(policy_name("acme"), "homelab-federation-acme");
        assert_eq!(spec().name(), "homelab-federation-acme");
    }

    #[test]
    fn federation_id_is_the_same_from_both_sides() {
        let here = spec();
        let there = PolicySpec {
            instance: "acme".into(),
            peer: "globex".into(),
            ..spec()
        };
        assert_eq!(here.federation_id(), "acme+globex");
        assert_eq!(there.federation_id(), "acme+globex");
    }

    #[test]
    fn policy_admits_the_peer_and_keeps_the_clusters_own_pods_and_nodes() {
        let value = serde_json::to_value(network_policy(&spec())).unwrap();
        assert_eq!(
            value,
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": "homelab-federation-acme",
                    "namespace": "default",
                    "labels": {
                        "app.kubernetes.io/managed-by": "terraform-provider-homelab",
                        "homelab.dev/instance": "globex",
                        "homelab.dev/peer": "acme",
                    },
                    "annotations": { "homelab.dev/federation": "acme+globex" },
                },
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [
                            { "ipBlock": { "cidr": "10.244.0.0/16" } },
                            { "ipBlock": { "cidr": "192.168.56.0/24" } },
                            { "ipBlock": { "cidr": "10.245.0.0/16" } },
                            { "ipBlock": { "cidr": "192.168.57.0/24" } },
                        ],
                    }],
                },
            })
        );
    }

    #[test]
    fn policy_writes_cidrs_with_host_bits_cleared() {
        let spec = PolicySpec {
            peer_pod_cidr: "10.244.3.7/16".parse().unwrap(),
            peer_subnet: "192.168.56.10/24".parse().unwrap(),
            own_subnet: "192.168.57.1/24".parse().unwrap(),
            ..spec()
        };
        let policy = network_policy(&spec);
        let cidrs: Vec<String> = policy.spec.unwrap().ingress.unwrap()[0]
            .from
            .as_ref()
            .unwrap()
            .iter()
            .map(|peer| peer.ip_block.as_ref().unwrap().cidr.clone())
            .collect();
        assert_eq!(cidrs, ["10.244.0.0/16", "192.168.56.0/24", "10.245.0.0/16", "192.168.57.0/24"]);
    }
}
