//! One typed reader of `ip -j` output, for every place that reads interfaces or routes (the
//! host's own networks, the netns backend's lab host, nodes and pods, the Vagrant guests and
//! host): `ip -j [-d] addr show` as [`Link`]s, `ip -j route show` as [`Route`]s. Parsing is
//! strict where a reader relies on a field (an address without `local` or `prefixlen`, a route
//! without a readable `dst` is an error naming it), and lenient about what `ip` adds over time
//! (unknown fields are ignored). `ip -j` prints nothing at all, not `[]`, for some empty
//! listings: that reads as empty.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::net::Ipv4Net;

/// One interface of `ip -j [-d] addr show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// `ifname`.
    pub name: String,
    /// `UP` is among its flags (administratively up).
    pub up: bool,
    /// `linkinfo.info_kind` (`bridge`, `veth`, …; only with `-d`).
    pub kind: Option<String>,
    /// The bridge it is attached to.
    pub master: Option<String>,
    /// Its link-layer address.
    pub mac: Option<String>,
    /// Its IPv4 addresses.
    pub addrs: Vec<Addr>,
}

/// One IPv4 address of a [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// `local`: the address itself.
    pub local: Ipv4Addr,
    /// `prefixlen`.
    pub prefix: u8,
    /// `address`: on a point-to-point link, the peer (the prefix is the peer's).
    pub peer: Option<Ipv4Addr>,
}

/// One route of `ip -j route show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its destination; `None` for `default`.
    pub dst: Option<Ipv4Net>,
    /// `type` when it is not a plain unicast route (`blackhole`, `unreachable`, …).
    pub kind: Option<String>,
    /// `gateway`.
    pub gateway: Option<Ipv4Addr>,
    /// `dev`.
    pub dev: Option<String>,
    /// `nexthops` of a multipath route: gateway and device of each.
    pub nexthops: Vec<(Option<Ipv4Addr>, Option<String>)>,
}

#[derive(Deserialize)]
struct RawLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    linkinfo: Option<RawLinkInfo>,
    master: Option<String>,
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<RawAddr>,
}

#[derive(Deserialize)]
struct RawLinkInfo {
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct RawAddr {
    family: Option<String>,
    local: Option<String>,
    address: Option<String>,
    prefixlen: Option<u64>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    gateway: Option<String>,
    dev: Option<String>,
    #[serde(default)]
    nexthops: Vec<RawHop>,
}

#[derive(Deserialize)]
struct RawHop {
    gateway: Option<String>,
    dev: Option<String>,
}

fn list<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| format!("not the JSON array `ip -j` prints: {e}"))
}

fn ipv4(text: &str, what: &str) -> Result<Ipv4Addr, String> {
    text.parse().map_err(|_| format!("{what} `{text}` is not an IPv4 address"))
}

/// The interfaces of `ip -j [-d] addr show` (IPv4 addresses only).
pub fn links(text: &str) -> Result<Vec<Link>, String> {
    let mut out = Vec::new();
    for raw in list::<RawLink>(text)? {
        let mut addrs = Vec::new();
        for a in raw.addr_info.iter().filter(|a| a.family.as_deref() == Some("inet")) {
            let local = a.local.as_deref().ok_or_else(|| format!("an address of {} has no `local`", raw.ifname))?;
            let local = ipv4(local, &format!("address of {}", raw.ifname))?;
            let prefix = a
                .prefixlen
                .and_then(|p| u8::try_from(p).ok())
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("address {local} of {} has no valid `prefixlen`", raw.ifname))?;
            let peer = a.address.as_deref().map(|p| ipv4(p, &format!("peer of {local}"))).transpose()?;
            addrs.push(Addr { local, prefix, peer });
        }
        out.push(Link {
            up: raw.flags.iter().any(|f| f == "UP"),
            kind: raw.linkinfo.and_then(|l| l.info_kind),
            master: raw.master,
            mac: raw.address,
            addrs,
            name: raw.ifname,
        });
    }
    Ok(out)
}

/// A route destination as `ip` writes it: `default`, `a.b.c.d/n` or a host `a.b.c.d`.
fn destination(dst: &str) -> Result<Option<Ipv4Net>, String> {
    if dst == "default" {
        return Ok(None);
    }
    let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
    let ip = ipv4(addr, "route destination")?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("route destination `{dst}`"))?;
    Ipv4Net::new(ip, len).map(|n| Some(n.trunc())).map_err(|_| format!("route destination `{dst}`"))
}

/// The routes of `ip -j route show`.
pub fn routes(text: &str) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    for raw in list::<RawRoute>(text)? {
        let dst = raw.dst.as_deref().ok_or_else(|| "a route has no `dst`".to_string())?;
        let gateway = raw.gateway.as_deref().map(|g| ipv4(g, &format!("gateway of {dst}"))).transpose()?;
        let nexthops = raw
            .nexthops
            .iter()
            .map(|h| Ok((h.gateway.as_deref().map(|g| ipv4(g, &format!("next hop of {dst}"))).transpose()?, h.dev.clone())))
            .collect::<Result<Vec<_>, String>>()?;
        out.push(Route {
            dst: destination(dst)?,
            kind: raw.kind.filter(|k| k != "unicast"),
            gateway,
            dev: raw.dev,
            nexthops,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_read_with_their_kind_master_flags_and_addresses() {
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},{"family":"inet6","local":"::1","prefixlen":128}]},
            {"ifindex":7,"ifname":"hlv0a4d0114","flags":["BROADCAST","UP"],"master":"hlb0a4d0100","address":"02:00:0a:4d:01:00","linkinfo":{"info_kind":"veth"},"addr_info":[]},
            {"ifindex":9,"ifname":"wg0","flags":["POINTOPOINT"],"addr_info":[{"family":"inet","local":"10.8.0.1","address":"10.8.0.2","prefixlen":32}]}]"#;
        let l = links(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].name.as_str(), l[0].up, l[0].addrs.len()), ("lo", true, 1));
        assert_eq!(l[0].addrs[0], Addr { local: Ipv4Addr::new(127, 0, 0, 1), prefix: 8, peer: None });
        assert_eq!((l[1].kind.as_deref(), l[1].master.as_deref(), l[1].mac.as_deref()), (Some("veth"), Some("hlb0a4d0100"), Some("02:00:0a:4d:01:00")));
        assert!(!l[2].up);
        assert_eq!(l[2].addrs[0].peer, Some(Ipv4Addr::new(10, 8, 0, 2)));
        assert_eq!(links("").unwrap(), vec![]);
        assert_eq!(links("  \n").unwrap(), vec![]);
    }

    #[test]
    fn broken_listings_are_errors_naming_what_is_wrong() {
        assert!(links("{}").unwrap_err().contains("JSON array"));
        let e = links(r#"[{"ifname":"eth0","addr_info":[{"family":"inet","prefixlen":24}]}]"#).unwrap_err();
        assert!(e.contains("eth0") && e.contains("local"), "{e}");
        let e = links(r#"[{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.0.1"}]}]"#).unwrap_err();
        assert!(e.contains("prefixlen"), "{e}");
        let e = routes(r#"[{"dst":"nonsense"}]"#).unwrap_err();
        assert!(e.contains("nonsense"), "{e}");
        assert!(routes(r#"[{"gateway":"10.0.0.1"}]"#).unwrap_err().contains("no `dst`"));
        assert!(routes(r#"[{"dst":"10.0.0.0/33"}]"#).is_err());
    }

    #[test]
    fn routes_are_read_with_default_hosts_kinds_and_next_hops() {
        let text = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
            {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
            {"type":"blackhole","dst":"172.16.5.0/24","flags":[]},
            {"dst":"10.9.9.9","gateway":"192.0.2.1","dev":"eth0"},
            {"dst":"10.1.0.0/16","nexthops":[{"gateway":"192.0.2.3","dev":"eth0"},{"gateway":"192.0.2.4","dev":"eth1"}]}]"#;
        let r = routes(text).unwrap();
        assert_eq!(r[0].dst, None);
        assert_eq!(r[0].gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(r[1].dst, Some("192.0.2.0/24".parse().unwrap()));
        assert_eq!((r[1].gateway, r[1].kind.as_deref(), r[1].dev.as_deref()), (None, None, Some("eth0")));
        assert_eq!(r[2].kind.as_deref(), Some("blackhole"));
        assert_eq!(r[3].dst, Some("10.9.9.9/32".parse().unwrap()));
        assert_eq!(r[4].nexthops, vec![(Some(Ipv4Addr::new(192, 0, 2, 3)), Some("eth0".into())), (Some(Ipv4Addr::new(192, 0, 2, 4)), Some("eth1".into()))]);
        assert_eq!(routes("").unwrap(), vec![]);
    }
}
