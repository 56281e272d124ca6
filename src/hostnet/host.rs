//! What the machine the provider runs on offers it: its own IPv4 networks (the addresses and
//! routes of the network namespace the process runs in), which the plan-time isolation check
//! keeps every lab away from, and whether this process may change networking at all
//! (CAP_NET_ADMIN, the tools). Everything here only reads, except [`HostLock`]: the lock file
//! by which several provider processes (parallel `terraform apply` in separate folders) take
//! turns at state they share on this host, such as a lab host namespace or its firewall table.
//!
//! The networks come from `ip -j -4 addr show` and `ip -j -4 route show table main`;
//! [`parse_ip_json`] is the pure half (on the typed reader [`super::ip`]) so that tests can feed
//! it real output captured inside a namespace of their own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{ip, HostNetError};
use crate::net::Ipv4Net;
use crate::process::{self, Cmd};

/// A network the host itself has: an interface address or a route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    /// The network, in canonical form (`192.0.2.0/24` for the address `192.0.2.2/24`; a host
    /// route is a `/32`).
    pub cidr: Ipv4Net,
    /// Where it comes from, for a human: `interface eth0 address 192.0.2.2/24` or
    /// `route 10.0.0.0/8 via 192.0.2.1 dev eth0`.
    pub source: String,
}

/// The capability bit of CAP_NET_ADMIN in `CapEff` (linux/capability.h).
const CAP_NET_ADMIN_BIT: u32 = 12;

/// The IPv4 networks of the network namespace this process runs in: every interface address
/// (as its network) and every route of the main table except default routes. Networks that
/// appear both as an address and as a route are listed once, with the address as source.
pub async fn host_networks() -> Result<Vec<HostNetwork>, HostNetError> {
    let addr_cmd = Cmd::new(["ip", "-j", "-4", "addr", "show"]);
    let route_cmd = Cmd::new(["ip", "-j", "-4", "route", "show", "table", "main"]);
    let (addrs, routes) = tokio::try_join!(process::run(&addr_cmd), process::run(&route_cmd))?;
    parse_ip_json(&addrs.stdout, &routes.stdout)
}

/// Turn the JSON of `ip -j -4 addr show` and `ip -j -4 route show` into host networks (see
/// [`host_networks`]). Default routes are skipped: they say where unknown traffic goes, not
/// which networks the host is on.
pub fn parse_ip_json(addr_json: &str, route_json: &str) -> Result<Vec<HostNetwork>, HostNetError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();

    let links = ip::links(addr_json).map_err(|why| HostNetError::Parse { cmd: "ip -j -4 addr show".into(), why })?;
    for link in &links {
        for a in &link.addrs {
            // On a point-to-point link the prefix belongs to the peer's address.
            let base = a.peer.unwrap_or(a.local);
            let cidr = Ipv4Net::new(base, a.prefix).map(|n| n.trunc()).map_err(|_| HostNetError::Parse {
                cmd: "ip -j -4 addr show".into(),
                why: format!("{}: prefix /{} of {base}", link.name, a.prefix),
            })?;
            let source = match a.peer {
                Some(p) => format!("interface {} address {} peer {p}/{}", link.name, a.local, a.prefix),
                None => format!("interface {} address {}/{}", link.name, a.local, a.prefix),
            };
            if seen.insert(cidr) {
                out.push(HostNetwork { cidr, source });
            }
        }
    }

    let routes = ip::routes(route_json).map_err(|why| HostNetError::Parse { cmd: "ip -j -4 route show table main".into(), why })?;
    for route in &routes {
        // Default routes say where unknown traffic goes, not which networks the host is on.
        let Some(cidr) = route.dst.filter(|c| c.prefix_len() > 0) else { continue };
        if seen.insert(cidr) {
            out.push(HostNetwork { cidr, source: describe_route(route, cidr) });
        }
    }
    Ok(out)
}

/// `route 10.0.0.0/8 via 192.0.2.1 dev eth0`, `route blackhole 10.9.0.0/16`, …
fn describe_route(route: &ip::Route, cidr: Ipv4Net) -> String {
    let mut text = String::from("route ");
    if let Some(kind) = &route.kind {
        text.push_str(kind);
        text.push(' ');
    }
    text.push_str(&cidr.to_string());
    if let Some(gw) = route.gateway {
        text.push_str(&format!(" via {gw}"));
    }
    if let Some(dev) = &route.dev {
        text.push_str(&format!(" dev {dev}"));
    }
    for (gw, dev) in &route.nexthops {
        let gw = gw.map(|g| g.to_string()).unwrap_or_else(|| "?".into());
        text.push_str(&format!(" nexthop via {gw} dev {}", dev.as_deref().unwrap_or("?")));
    }
    text
}

/// The effective capability set of this process (`CapEff` of `/proc/self/status`).
pub fn effective_capabilities() -> Result<u64, HostNetError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| HostNetError::Parse {
        cmd: "read /proc/self/status".into(),
        why: e.to_string(),
    })?;
    parse_cap_eff(&status).ok_or_else(|| HostNetError::Parse {
        cmd: "read /proc/self/status".into(),
        why: "no CapEff line".into(),
    })
}

/// The `CapEff` mask of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether a capability mask holds CAP_NET_ADMIN.
pub fn has_cap_net_admin(cap_eff: u64) -> bool {
    cap_eff & (1u64 << CAP_NET_ADMIN_BIT) != 0
}

/// Whether this process may change network namespaces, links, routes and firewall rules.
/// An unreadable status counts as "no": preflight then explains what is needed.
pub fn process_has_cap_net_admin() -> bool {
    effective_capabilities()
        .map(has_cap_net_admin)
        .unwrap_or(false)
}

/// Where `program` is on `PATH` (plus the sbin folders, which a non-login root shell may lack),
/// if it is there and executable.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(program))
        .find(|p| {
            Path::new(p)
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Folder of the lock files (tmpfs, so a reboot clears stale ones along with the namespaces).
pub const LOCK_DIR: &str = "/run/lock";

/// An exclusive `flock` on `/run/lock/homelab-<name>.lock`, held until dropped (the kernel also
/// drops it when the process dies, so a crash never leaves the lock held).
#[derive(Debug)]
pub struct HostLock {
    file: std::fs::File,
    path: PathBuf,
}

impl HostLock {
    /// Wait up to `patience` for the lock `name` (e.g. `netns-homelab`). The error names the
    /// lock file.
    pub async fn acquire(name: &str, patience: std::time::Duration) -> std::io::Result<HostLock> {
        use fs2::FileExt;
        let path = Path::new(LOCK_DIR).join(format!("homelab-{name}.lock"));
        let with_path =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        std::fs::create_dir_all(LOCK_DIR).map_err(with_path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(with_path)?;
        let deadline = tokio::time::Instant::now() + patience;
        // Polling keeps the wait inside the async runtime (no blocked thread) and bounded.
        loop {
            match file.try_lock_exclusive() {
                Ok(()) => return Ok(HostLock { file, path }),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::EWOULDBLOCK) =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "{}: still held by another process after {}s",
                                path.display(),
                                patience.as_secs()
                            ),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(e) => return Err(with_path(e)),
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":4,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,"broadcast":"192.0.2.255"}]},
        {"ifindex":5,"ifname":"wg0","addr_info":[{"family":"inet","local":"10.8.0.1","address":"10.8.0.2","prefixlen":32}]}]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
        {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
        {"dst":"10.0.0.0/8","gateway":"192.0.2.1","dev":"eth0","flags":[]},
        {"type":"blackhole","dst":"172.16.5.0/24","flags":[]},
        {"dst":"198.51.100.7","dev":"eth0","scope":"link","flags":[]}]"#;

    #[test]
    fn addresses_and_routes_become_networks_without_default() {
        let nets = parse_ip_json(ADDRS, ROUTES).unwrap();
        let got: Vec<(String, &str)> = nets
            .iter()
            .map(|n| (n.cidr.to_string(), n.source.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.0/8".into(), "interface lo address 127.0.0.1/8"),
                ("192.0.2.0/24".into(), "interface eth0 address 192.0.2.2/24"),
                (
                    "10.8.0.2/32".into(),
                    "interface wg0 address 10.8.0.1 peer 10.8.0.2/32"
                ),
                (
                    "10.0.0.0/8".into(),
                    "route 10.0.0.0/8 via 192.0.2.1 dev eth0"
                ),
                ("172.16.5.0/24".into(), "route blackhole 172.16.5.0/24"),
                ("198.51.100.7/32".into(), "route 198.51.100.7/32 dev eth0"),
            ]
        );
    }

    #[test]
    fn explicit_zero_route_is_skipped_like_default() {
        let nets = parse_ip_json("[]", r#"[{"dst":"0.0.0.0/0","dev":"eth0"}]"#).unwrap();
        assert!(nets.is_empty());
    }

    #[test]
    fn empty_output_is_no_networks_and_garbage_is_an_error() {
        assert!(parse_ip_json("", "").unwrap().is_empty());
        let err = parse_ip_json("{", "[]").unwrap_err();
        assert!(err.to_string().contains("ip -j -4 addr show"), "{err}");
        let err = parse_ip_json("[]", r#"[{"dst":"300.1.1.0/24"}]"#).unwrap_err();
        assert!(err.to_string().contains("300.1.1.0"), "{err}");
    }

    #[test]
    fn cap_net_admin_is_bit_12_of_cap_eff() {
        let root = "Name:\tx\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";
        assert!(has_cap_net_admin(parse_cap_eff(root).unwrap()));
        let user = "CapEff:\t0000000000000000\n";
        assert!(!has_cap_net_admin(parse_cap_eff(user).unwrap()));
        let only_net_admin = "CapEff:\t0000000000001000\n";
        assert!(has_cap_net_admin(parse_cap_eff(only_net_admin).unwrap()));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[tokio::test]
    async fn host_lock_is_exclusive_until_dropped() {
        let name = format!("unit-{}", std::process::id());
        let first = HostLock::acquire(&name, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        let err = HostLock::acquire(&name, std::time::Duration::from_millis(30))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains(&format!("homelab-{name}.lock")),
            "{err}"
        );
        let path = first.path().to_path_buf();
        drop(first);
        let again = HostLock::acquire(&name, std::time::Duration::from_millis(30))
            .await
            .unwrap();
        drop(again);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn find_program_finds_sh_and_not_nonsense() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-homelab").is_none());
    }
}
