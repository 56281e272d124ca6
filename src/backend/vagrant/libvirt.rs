//! What the backend reads from libvirt (through `virsh`) about an instance: which domains,
//! volumes and networks belong to it, which bridge carries its host-only network, and whether
//! a network is isolated (pure parsing), and the network I/O itself: defining an instance's
//! isolated networks, reading what is wrong with them, and removing what Vagrant left in
//! libvirt on teardown (through `virsh`, as methods of [`super::VagrantBackend`]).

use std::path::Path;
use std::time::Duration;

use crate::backend::{BackendError, LabSpec};
use crate::net::Ipv4Net;

use super::config::{VagrantBackend, QUICK};
use super::files::io_err;
use super::render::{self, hostonly_network_name, mgmt_network_name, DOMAIN_PREFIX};
use super::runner::{self, Finished, Limits, ToolCommand};

/// Bridge name of an instance's host-only network: `hlb` + the subnet's network address in hex
/// (as the netns backend names its bridges). Deterministic, at most 15 characters, and
/// collision-free because registry subnets are disjoint.
pub fn hostonly_bridge(subnet: &Ipv4Net) -> String {
    format!("hlb{:08x}", u32::from(subnet.network()))
}

/// Bridge name of an instance's management network: `hlm` + its network address in hex.
pub fn mgmt_bridge(mgmt: &Ipv4Net) -> String {
    format!("hlm{:08x}", u32::from(mgmt.network()))
}

/// The definition of an isolated libvirt network (no `<forward>`: nothing is routed or NATed
/// off it) with the host at `.1`, and DHCP over the rest of the subnet when `dhcp`.
///
/// The backend defines an instance's networks itself before `vagrant up`, with the bridge
/// names above: vagrant-libvirt would otherwise pick the first free `virbrN`, and two
/// `vagrant up` of different instances running at once pick the same one (its lock is per
/// process). vagrant-libvirt finds these networks by address and name and uses them as they are.
pub fn network_xml(name: &str, bridge: &str, subnet: &Ipv4Net, dhcp: bool) -> String {
    let host = crate::net::gateway(subnet);
    let mask = subnet.netmask();
    let range = if dhcp {
        let first = crate::net::nth_address(subnet, 2).unwrap_or(host);
        let size = 1u32 << (32 - u32::from(subnet.prefix_len()));
        let last = crate::net::nth_address(subnet, size.saturating_sub(2)).unwrap_or(first);
        format!("\n    <dhcp>\n      <range start='{first}' end='{last}'/>\n    </dhcp>\n  ")
    } else {
        String::new()
    };
    format!(
        "<network ipv6='no'>\n  <name>{name}</name>\n  <bridge name='{bridge}' stp='on' delay='0'/>\n  <ip address='{host}' netmask='{mask}'>{range}</ip>\n</network>\n"
    )
}

/// The libvirt networks an instance owns: host-only, then management.
pub fn instance_networks(instance: &str) -> [String; 2] {
    [hostonly_network_name(instance), mgmt_network_name(instance)]
}

/// Whether `node` is a node name of `instance` (`acme-cp-2`, `acme-worker-10`): exact
/// scheme, so that `acme` never claims `acme-cp`'s nodes (`acme-cp-cp-1`).
pub fn is_node_of(instance: &str, node: &str) -> bool {
    let Some(rest) = node
        .strip_prefix(instance)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let num = rest
        .strip_prefix("cp-")
        .or_else(|| rest.strip_prefix("worker-"));
    matches!(num, Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
}

/// Whether a libvirt domain name is one of `instance`'s VMs (`homelab-acme-cp-1`).
pub fn is_domain_of(instance: &str, domain: &str) -> bool {
    domain
        .strip_prefix(DOMAIN_PREFIX)
        .is_some_and(|node| is_node_of(instance, node))
}

/// Whether a storage volume is a disk of one of `instance`'s VMs (`homelab-acme-cp-1.img`,
/// extra disks `homelab-acme-cp-1-vdb.qcow2`).
pub fn is_volume_of(instance: &str, volume: &str) -> bool {
    let stem = volume.split('.').next().unwrap_or(volume);
    if is_domain_of(instance, stem) {
        return true;
    }
    // Extra disks: `<domain>-<dev>`.
    stem.rsplit_once('-')
        .is_some_and(|(dom, dev)| dev.starts_with("vd") && is_domain_of(instance, dom))
}

/// The bridge of `virsh net-info` output (`Bridge:         virbr1`).
pub fn parse_net_info_bridge(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "Bridge" && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

/// Whether a network's XML (`virsh net-dumpxml`) has no `<forward>` element: isolated, no
/// NAT or routing to anywhere.
pub fn is_isolated(xml: &str) -> bool {
    !xml.contains("<forward")
}

/// Names from `virsh … --name` output (one per line, blanks skipped).
pub fn parse_names(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Volume names from `virsh vol-list POOL` (a header, a rule, then `name path` rows).
pub fn parse_vol_list(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with('-'))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Network I/O: libvirt networks of an instance, through `virsh`.
// ---------------------------------------------------------------------------------------------

impl VagrantBackend {
    pub(super) async fn virsh(&self, args: &[&str]) -> Result<Finished, BackendError> {
        let mut argv = vec!["virsh", "-q", "-c", self.cfg.libvirt_uri.as_str()];
        argv.extend_from_slice(args);
        runner::run_tool(
            &ToolCommand::new(self.host_cmd(argv)),
            &Limits::timeout(QUICK),
            self.cfg.grace,
        )
        .await
    }

    /// Define and start the instance's host-only and management networks if they are not
    /// there (serialized across processes by a host lock).
    pub(super) async fn ensure_networks(&self, spec: &LabSpec, dir: &Path) -> Result<(), BackendError> {
        let mut nets = vec![(
            render::hostonly_network_name(&spec.instance),
            self::hostonly_bridge(&spec.subnet),
            spec.subnet,
            false,
        )];
        if let Some(m) = spec.mgmt_cidr {
            nets.push((render::mgmt_network_name(&spec.instance), self::mgmt_bridge(&m), m, true));
        }
        let _lock = crate::hostnet::host::HostLock::acquire("libvirt-networks", Duration::from_secs(120))
            .await
            .map_err(|e| BackendError::Other(format!("locking libvirt network creation: {e}")))?;
        for (name, bridge, subnet, dhcp) in nets {
            let info = self.virsh(&["net-info", &name]).await?;
            if !info.status.success() {
                let file = dir.join(format!("{name}.net.xml"));
                std::fs::write(&file, self::network_xml(&name, &bridge, &subnet, dhcp))
                    .map_err(|e| io_err(&file, e))?;
                tracing::info!(network = %name, bridge = %bridge, %subnet, "defining isolated libvirt network");
                let path = file.display().to_string();
                self.virsh(&["net-define", &path]).await?.ok()?;
            }
            let info = self.virsh(&["net-info", &name]).await?;
            let active = info
                .stdout
                .lines()
                .any(|l| l.starts_with("Active:") && l.trim_end().ends_with("yes"));
            if !active {
                self.virsh(&["net-start", &name]).await?.ok()?;
            }
        }
        Ok(())
    }

    /// libvirt networks of the instance that exist (`virsh net-list --all --name`).
    pub(super) async fn existing_networks(&self, instance: &str) -> Result<Vec<String>, BackendError> {
        let out = self.virsh(&["net-list", "--all", "--name"]).await?.ok()?;
        let all = self::parse_names(&out.stdout);
        Ok(self::instance_networks(instance)
            .into_iter()
            .filter(|n| all.contains(n))
            .collect())
    }

    pub(super) async fn network_problems(&self, instance: &str) -> Result<Vec<String>, BackendError> {
        let mut problems = Vec::new();
        let existing = self.existing_networks(instance).await?;
        for net in self::instance_networks(instance) {
            if !existing.contains(&net) {
                problems.push(format!("libvirt network {net} is missing"));
                continue;
            }
            let xml = self.virsh(&["net-dumpxml", &net]).await?.ok()?;
            if !self::is_isolated(&xml.stdout) {
                problems.push(format!(
                    "libvirt network {net} forwards traffic (it has a <forward> element): it must be isolated"
                ));
            }
        }
        Ok(problems)
    }

    /// Remove what Vagrant left of the instance in libvirt: domains, disks, networks.
    pub(super) async fn cleanup_libvirt(&self, instance: &str) -> Result<(), BackendError> {
        // The three listings at once: each `virsh` is a connection to libvirtd of its own.
        let (domains, vols, nets) = tokio::join!(
            self.virsh(&["list", "--all", "--name"]),
            self.virsh(&["vol-list", "default"]),
            self.existing_networks(instance),
        );
        let domains = domains?.ok()?;
        for dom in self::parse_names(&domains.stdout)
            .into_iter()
            .filter(|d| self::is_domain_of(instance, d))
        {
            tracing::info!(domain = %dom, "removing a domain Vagrant left behind");
            let _ = self.virsh(&["destroy", &dom]).await?;
            self.virsh(&["undefine", &dom, "--remove-all-storage"])
                .await?
                .ok()?;
        }
        if let Ok(vols) = vols?.ok() {
            for vol in self::parse_vol_list(&vols.stdout)
                .into_iter()
                .filter(|v| self::is_volume_of(instance, v))
            {
                tracing::info!(volume = %vol, "removing a disk Vagrant left behind");
                self.virsh(&["vol-delete", &vol, "--pool", "default"])
                    .await?
                    .ok()?;
            }
        }
        // The instance's networks (host-only and management: at most two) at once.
        let remove = |net: String| async move {
            tracing::info!(network = %net, "removing the instance's libvirt network");
            let _ = self.virsh(&["net-destroy", &net]).await?;
            self.virsh(&["net-undefine", &net]).await?.ok().map(|_| ())
        };
        let mut nets = nets?.into_iter();
        match (nets.next(), nets.next()) {
            (Some(a), Some(b)) => {
                let (x, y) = tokio::join!(remove(a), remove(b));
                x?;
                y?;
            }
            (Some(a), None) => remove(a).await?,
            _ => {}
        }
        Ok(())
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_definitions_are_isolated_with_deterministic_bridges() {
        let subnet: Ipv4Net = "192.168.56.0/24".parse().unwrap();
        let xml = network_xml("homelab-acme", &hostonly_bridge(&subnet), &subnet, false);
        assert!(is_isolated(&xml), "{xml}");
        assert!(xml.contains("<bridge name='hlbc0a83800'"), "{xml}");
        assert!(xml.contains("<ip address='192.168.56.1' netmask='255.255.255.0'></ip>"), "{xml}");
        let mgmt: Ipv4Net = "172.30.1.0/24".parse().unwrap();
        let xml = network_xml("homelab-acme-mgmt", &mgmt_bridge(&mgmt), &mgmt, true);
        assert!(xml.contains("<range start='172.30.1.2' end='172.30.1.254'/>"), "{xml}");
        assert_eq!(mgmt_bridge(&mgmt).len(), 11);
    }

    #[test]
    fn node_names_are_matched_exactly() {
        assert!(is_node_of("acme", "acme-cp-1"));
        assert!(is_node_of("acme", "acme-worker-10"));
        assert!(!is_node_of("acme", "acme-cp-cp-1"));
        assert!(!is_node_of("acme-cp", "acme-cp-1"));
        assert!(!is_node_of("acme", "acmex-cp-1"));
        assert!(!is_node_of("acme", "acme-cp-"));
        assert!(is_domain_of("acme", "homelab-acme-cp-1"));
        assert!(!is_domain_of("acme", "acme-cp-1"));
        assert!(is_volume_of("acme", "homelab-acme-worker-2.img"));
        assert!(is_volume_of("acme", "homelab-acme-worker-2-vdb.qcow2"));
        assert!(!is_volume_of("acme", "homelab-globex-cp-1.img"));
        assert!(!is_volume_of(
            "acme",
            "homelab-test_vagrant_box_image_0_box.img"
        ));
    }

    #[test]
    fn net_info_and_vol_list_are_parsed() {
        let info = "Name:           homelab-acme\nUUID:           x\nActive:         yes\nPersistent:     yes\nAutostart:      no\nBridge:         virbr1\n";
        assert_eq!(parse_net_info_bridge(info).as_deref(), Some("virbr1"));
        let vols = " Name                   Path\n----------------------------------------\n homelab-acme-cp-1.img  /var/lib/libvirt/images/homelab-acme-cp-1.img\n box.img /x\n";
        assert_eq!(
            parse_vol_list(vols),
            vec!["homelab-acme-cp-1.img", "box.img"]
        );
        assert!(is_isolated(
            "<network><name>x</name><bridge name='virbr1'/></network>"
        ));
        assert!(!is_isolated("<network><forward mode='nat'/></network>"));
    }
}
