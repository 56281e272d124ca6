//! hostnet::host (work in progress).
use crate::net::Ipv4Net;
/// A network the host itself has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork { pub cidr: Ipv4Net, pub source: String }
/// Placeholder until implemented.
pub async fn host_networks() -> Result<Vec<HostNetwork>, super::HostNetError> { Ok(vec![]) }
