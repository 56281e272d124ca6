//! Reading a namespace's interfaces: through `ip -d -j addr show` (the typed reader,
//! `hostnet::ip`) for the lab host, or in-process (a short-lived thread that joins the namespace
//! with `setns`) for nodes and sysctls; and the lab-host views one refresh shares, with their
//! cache.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::hostnet::ip;

use super::naming::NETNS_DIR;

/// One interface as `ip -d -j addr show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct IfView {
    /// Administratively up.
    pub(super) up: bool,
    /// `linkinfo.info_kind` (`bridge`, `veth`, …).
    pub(super) kind: Option<String>,
    /// The bridge it is attached to.
    pub(super) master: Option<String>,
    /// IPv4 addresses with their prefix.
    pub(super) addrs: Vec<(Ipv4Addr, u8)>,
    /// The link-layer address (`ip` listings only; the in-process reader leaves it out).
    pub(super) mac: Option<String>,
}

impl IfView {
    pub(super) fn has_addr(&self, ip: Ipv4Addr, prefix: u8) -> bool {
        self.addrs.contains(&(ip, prefix))
    }
}

/// The interfaces of one namespace, by name.
pub(super) type NsView = HashMap<String, IfView>;

/// Shared lab-host views by namespace: when each was taken, and the view (`None`: no such namespace).
pub(super) type HostViews = HashMap<String, (std::time::Instant, Option<NsView>)>;

/// How long reads may share one view of a lab host.
pub(super) const HOST_VIEW_TTL: std::time::Duration = std::time::Duration::from_millis(1500);

/// Lab-host views shared by the reads of one refresh. Terraform refreshes every instance of a
/// configuration at once and each read needs the same lab-host interfaces; one `ip` call then
/// serves them all. A view lives at most [`HOST_VIEW_TTL`], only `observe` takes and uses it,
/// and this process forgets it as soon as it changes that lab host (converge, teardown).
pub(super) fn host_views() -> &'static tokio::sync::Mutex<HostViews> {
    static VIEWS: std::sync::OnceLock<tokio::sync::Mutex<HostViews>> = std::sync::OnceLock::new();
    VIEWS.get_or_init(|| tokio::sync::Mutex::new(HashMap::new()))
}

/// The interfaces of a node namespace read in-process: a short-lived thread joins the
/// namespace (`setns`) and lists its interfaces with `getifaddrs`, then exits, so no other thread
/// ever changes namespace. Refreshing a configuration reads every node; spawning `ip` for each
/// one costs more than the rest of the read together. `Ok(None)`: the namespace does not exist.
/// Only `up` and the IPv4 addresses are filled in (all a node's check needs).
pub(super) fn node_view_in_process(ns: &str) -> std::io::Result<Option<NsView>> {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(Path::new(NETNS_DIR).join(ns)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> std::io::Result<NsView> {
                // SAFETY: setns only changes this thread's network namespace, and this thread
                // ends right after; getifaddrs' list is only read before freeifaddrs.
                unsafe {
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
                    if libc::getifaddrs(&mut list) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut view = NsView::new();
                    let mut cur = list;
                    while !cur.is_null() {
                        let ifa = &*cur;
                        cur = ifa.ifa_next;
                        if ifa.ifa_name.is_null() {
                            continue;
                        }
                        let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                        let entry = view.entry(name).or_default();
                        entry.up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
                        if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
                            let prefix = if ifa.ifa_netmask.is_null() {
                                32
                            } else {
                                let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
                            };
                            entry.addrs.push((ip, prefix));
                        }
                    }
                    libc::freeifaddrs(list);
                    Ok(view)
                }
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace reader thread panicked")))
    })
    .map(Some)
}

/// A file under `/proc/sys` as the namespace `ns` sees it (`net/ipv4/ip_forward`), read by a
/// short-lived thread that joins the namespace, like [`node_view_in_process`]. `Ok(None)`: the
/// namespace does not exist.
pub(super) fn sysctl_in_process(ns: &str, key: &str) -> std::io::Result<Option<String>> {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(Path::new(NETNS_DIR).join(ns)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = Path::new("/proc/sys").join(key);
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> std::io::Result<String> {
                // SAFETY: setns only changes this thread's network namespace, and this thread
                // ends right after reading one file.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(std::fs::read_to_string(&path)?.trim().to_string())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace reader thread panicked")))
    })
    .map(Some)
}

/// The interfaces of `ip -d -j addr show` by name (through the typed reader, `hostnet::ip`).
pub(super) fn parse_links(text: &str) -> Result<NsView, String> {
    Ok(ip::links(text)?
        .into_iter()
        .map(|l| {
            let view = IfView {
                up: l.up,
                kind: l.kind,
                master: l.master,
                addrs: l.addrs.iter().map(|a| (a.local, a.prefix)).collect(),
                mac: l.mac,
            };
            (l.name, view)
        })
        .collect())
}

/// A named namespace exists (its file under `/run/netns`).
pub(super) fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_listing_is_parsed() {
        let text = r#"[{"ifname":"lo","flags":["LOOPBACK","UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"hlbc0a83800","flags":["BROADCAST","UP"],"linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"192.168.56.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
            {"ifname":"hlvc0a838000a","flags":["BROADCAST"],"master":"hlbc0a83800","linkinfo":{"info_kind":"veth"},"addr_info":[]}]"#;
        let view = parse_links(text).unwrap();
        let br = &view["hlbc0a83800"];
        assert!(br.up);
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(br.addrs, vec![("192.168.56.1".parse().unwrap(), 24)]);
        let v = &view["hlvc0a838000a"];
        assert!(!v.up);
        assert_eq!(v.master.as_deref(), Some("hlbc0a83800"));
    }
}
