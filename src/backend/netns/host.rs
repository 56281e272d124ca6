//! The netns backend value: the lab host namespace it works in and that host's nftables
//! forwarding, and what this host must offer it (CAP_NET_ADMIN, `ip`, `nft`). The lifecycle is in the module's root; the other rooms extend this type.

use std::sync::Arc;

use crate::backend::BackendError;
use crate::hostnet::host::has_cap_net_admin;
use crate::hostnet::nft::NftForwarding;

use super::naming::node_netns;

/// The `netns` backend for one lab host namespace.
#[derive(Debug, Clone)]
pub struct NetnsBackend {
    pub(super) host_ns: String,
    pub(super) nft: Arc<NftForwarding>,
}

impl NetnsBackend {
    /// A backend whose lab host is the named namespace `host_ns` (provider default `homelab`).
    pub fn new(host_ns: impl Into<String>) -> Self {
        let host_ns = host_ns.into();
        NetnsBackend {
            nft: Arc::new(NftForwarding::new(host_ns.clone())),
            host_ns,
        }
    }

    /// The lab host namespace.
    pub fn host_ns(&self) -> &str {
        &self.host_ns
    }

    /// The namespace of node `node` of this lab host.
    pub fn node_netns(&self, node: &str) -> String {
        node_netns(&self.host_ns, node)
    }

    /// The nftables forwarding of this lab host, as its concrete type.
    pub fn nft(&self) -> Arc<NftForwarding> {
        self.nft.clone()
    }

}

/// Check the static prerequisites: CAP_NET_ADMIN in `cap_eff`, `ip` and `nft` present.
pub fn check_prerequisites(
    cap_eff: u64,
    have_ip: bool,
    have_nft: bool,
) -> Result<(), BackendError> {
    if !has_cap_net_admin(cap_eff) {
        return Err(BackendError::Unavailable {
            what: "the netns backend needs CAP_NET_ADMIN to create network namespaces, bridges and veths, and this provider process does not have it".into(),
            fix: "run Terraform as root (`sudo -E terraform apply`), or give the provider binary the capabilities (`sudo setcap cap_net_admin,cap_sys_admin+ep terraform-provider-homelab`), or choose backend = \"vagrant\"".into(),
        });
    }
    if !have_ip {
        return Err(BackendError::Unavailable {
            what: "the netns backend needs the `ip` command, which is not on PATH".into(),
            fix: "install the Debian package `iproute2` (apt-get install iproute2)".into(),
        });
    }
    if !have_nft {
        return Err(BackendError::Unavailable {
            what: "the netns backend needs the `nft` command (its lab host firewall), which is not on PATH".into(),
            fix: "install the Debian package `nftables` (apt-get install nftables)".into(),
        });
    }
    Ok(())
}
