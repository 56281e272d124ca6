//! Pure IPv4 CIDR arithmetic: canonical parsing, overlap tests, pools of equal-sized slots
//! and the addresses the product derives from a subnet (gateway, node IPs). No I/O.

use std::net::Ipv4Addr;

pub use ipnet::Ipv4Net;
use thiserror::Error;

/// A CIDR string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetError {
    /// Not of the form `a.b.c.d/n` (IPv4 only).
    #[error("`{given}` is not an IPv4 CIDR (expected a.b.c.d/n, for example 10.96.0.0/12)")]
    Unparsable {
        /// The text as given.
        given: String,
    },
    /// Host bits are set: `10.244.0.0/12` instead of `10.240.0.0/12`.
    #[error("`{given}` has host bits set: the /{prefix} network that contains it is `{suggestion}`")]
    NotCanonical {
        /// The text as given.
        given: String,
        /// Its prefix length.
        prefix: u8,
        /// The canonical network that contains it.
        suggestion: Ipv4Net,
    },
    /// A special-purpose range: nothing would ever reach a lab there.
    #[error("`{given}` overlaps the special-purpose range {range}: no lab network can work there. Use a private range such as 192.168.0.0/16, 172.16.0.0/12 or 10.0.0.0/8")]
    SpecialPurpose {
        /// The text as given.
        given: String,
        /// The range it touches.
        range: SpecialRange,
    },
}

/// A special-purpose IPv4 range (RFC 6890) that no lab network or pool may touch: packets to
/// or from it never behave like a lab network's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    /// The range.
    pub cidr: Ipv4Net,
    /// What it is.
    pub what: &'static str,
    /// Where it is defined.
    pub rfc: &'static str,
}

impl std::fmt::Display for SpecialRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.cidr, self.what, self.rfc)
    }
}

/// The special-purpose ranges refused, most specific first.
pub const SPECIAL_RANGES: [(Ipv4Addr, u8, &str, &str); 6] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "unspecified: \"this network\"", "RFC 1122"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback", "RFC 1122"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local", "RFC 3927"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast", "RFC 5771"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast", "RFC 919"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved", "RFC 1112"),
];

/// The first special-purpose range that `net` overlaps, if any.
pub fn special_range(net: &Ipv4Net) -> Option<SpecialRange> {
    SPECIAL_RANGES.iter().find_map(|&(addr, prefix, what, rfc)| {
        let cidr = Ipv4Net::new(addr, prefix).expect("valid special range");
        overlaps(net, &cidr).then_some(SpecialRange { cidr, what, rfc })
    })
}

/// [`parse_canonical`], refusing networks that touch a [`special_range`]: what a pool or an
/// instance's network may be.
pub fn parse_lab_network(text: &str) -> Result<Ipv4Net, NetError> {
    let net = parse_canonical(text)?;
    match special_range(&net) {
        Some(range) => Err(NetError::SpecialPurpose {
            given: text.to_string(),
            range,
        }),
        None => Ok(net),
    }
}

/// Parse `a.b.c.d/n` and insist that it is the network address (no host bits set).
pub fn parse_canonical(text: &str) -> Result<Ipv4Net, NetError> {
    let net: Ipv4Net = text.trim().parse().map_err(|_| NetError::Unparsable {
        given: text.to_string(),
    })?;
    if text.trim() != text || net.trunc() != net {
        return Err(NetError::NotCanonical {
            given: text.to_string(),
            prefix: net.prefix_len(),
            suggestion: net.trunc(),
        });
    }
    Ok(net)
}

/// Whether two networks share at least one address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The `n`-th address of a network (`0` is the network address itself).
/// `None` when the network has fewer than `n + 1` addresses.
pub fn nth_address(net: &Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let size: u64 = 1u64 << (32 - u32::from(net.prefix_len()));
    if u64::from(n) >= size {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(net.network()) + n))
}

/// The gateway of an instance subnet: its first host address (`.1`).
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    nth_address(subnet, 1).unwrap_or(subnet.network())
}

/// Offset of `addr` inside `net` (`None` when outside).
pub fn offset_in(net: &Ipv4Net, addr: Ipv4Addr) -> Option<u32> {
    net.contains(&addr)
        .then(|| u32::from(addr) - u32::from(net.network()))
}

/// A pool of equal-sized slots (`/prefix` networks inside `cidr`), handed out in order starting
/// at `first` and wrapping round to the start of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The whole pool, e.g. `10.240.0.0/12`.
    pub cidr: Ipv4Net,
    /// Size of each slot, e.g. 16.
    pub prefix: u8,
    /// The slot handed out first, e.g. `10.244.0.0/16`.
    pub first: Ipv4Net,
}

/// A pool definition that does not work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    /// The slot prefix is shorter than the pool's own prefix, or longer than 30.
    #[error("a /{prefix} does not fit in {cidr}: the prefix must be between {} and 30", cidr.prefix_len())]
    PrefixDoesNotFit {
        /// The pool.
        cidr: Ipv4Net,
        /// The requested slot prefix.
        prefix: u8,
    },
}

impl Pool {
    /// A pool starting at its first slot.
    pub fn new(cidr: Ipv4Net, prefix: u8) -> Result<Pool, PoolError> {
        Pool::starting_at(cidr, prefix, cidr.network())
    }

    /// A pool whose first slot is the one containing `start` (or the pool's first slot when
    /// `start` lies outside the pool).
    pub fn starting_at(cidr: Ipv4Net, prefix: u8, start: Ipv4Addr) -> Result<Pool, PoolError> {
        if prefix < cidr.prefix_len() || prefix > 30 {
            return Err(PoolError::PrefixDoesNotFit { cidr, prefix });
        }
        let anchor = if cidr.contains(&start) {
            start
        } else {
            cidr.network()
        };
        let first = Ipv4Net::new(anchor, prefix)
            .map_err(|_| PoolError::PrefixDoesNotFit { cidr, prefix })?
            .trunc();
        Ok(Pool { cidr, prefix, first })
    }

    /// How many slots the pool holds.
    pub fn capacity(&self) -> u64 {
        1u64 << (self.prefix - self.cidr.prefix_len())
    }

    /// Index of the slot `net` in pool order (0 = `first`), if `net` is exactly a slot.
    pub fn index_of(&self, net: &Ipv4Net) -> Option<u64> {
        if net.prefix_len() != self.prefix || !self.cidr.contains(net) || net.trunc() != *net {
            return None;
        }
        let step = 1u64 << (32 - u32::from(self.prefix));
        let raw = (u64::from(u32::from(net.network())) - u64::from(u32::from(self.cidr.network()))) / step;
        let first = (u64::from(u32::from(self.first.network()))
            - u64::from(u32::from(self.cidr.network())))
            / step;
        Some((raw + self.capacity() - first) % self.capacity())
    }

    /// The slot at position `i` in pool order.
    pub fn slot(&self, i: u64) -> Ipv4Net {
        let step = 1u64 << (32 - u32::from(self.prefix));
        let first = (u64::from(u32::from(self.first.network()))
            - u64::from(u32::from(self.cidr.network())))
            / step;
        let raw = (first + i) % self.capacity();
        let base = u64::from(u32::from(self.cidr.network())) + raw * step;
        Ipv4Net::new(Ipv4Addr::from(base as u32), self.prefix).expect("prefix checked in new")
    }

    /// Every slot in pool order.
    pub fn slots(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        (0..self.capacity()).map(move |i| self.slot(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_ranges_are_refused_citing_the_range() {
        for (text, cites) in [
            ("0.0.0.0/24", "0.0.0.0/8 (unspecified"),
            ("127.0.0.0/16", "loopback, RFC 1122"),
            ("169.254.3.0/24", "link-local, RFC 3927"),
            ("224.0.0.0/24", "224.0.0.0/4 (multicast, RFC 5771)"),
            ("239.255.0.0/16", "multicast"),
            ("255.255.255.0/24", "255.255.255.255/32 (limited broadcast, RFC 919)"),
            ("240.0.0.0/24", "240.0.0.0/4 (reserved, RFC 1112)"),
            ("0.0.0.0/0", "0.0.0.0/8"),
        ] {
            let e = parse_lab_network(text).unwrap_err().to_string();
            assert!(e.contains(cites), "{text}: {e}");
        }
        for ok in ["10.244.0.0/16", "192.168.56.0/24", "172.30.0.0/24", "1.0.0.0/24", "223.255.255.0/24", "126.255.255.0/24"] {
            assert!(parse_lab_network(ok).is_ok(), "{ok}");
        }
        // Canonical form is still checked first.
        assert!(matches!(parse_lab_network("10.244.0.0/12"), Err(NetError::NotCanonical { .. })));
    }

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn canonical_cidr_accepted() {
        assert_eq!(parse_canonical("10.240.0.0/12").unwrap(), n("10.240.0.0/12"));
    }

    #[test]
    fn host_bits_set_suggests_the_containing_network() {
        let err = parse_canonical("10.244.0.0/12").unwrap_err();
        assert_eq!(
            err,
            NetError::NotCanonical {
                given: "10.244.0.0/12".into(),
                prefix: 12,
                suggestion: n("10.240.0.0/12")
            }
        );
        assert!(err.to_string().contains("10.240.0.0/12"));
    }

    #[test]
    fn garbage_and_ipv6_are_unparsable() {
        for bad in ["", "10.0.0.0", "10.0.0.0/33", "fd00::/64", "ten/8", " 10.0.0.0/8"] {
            assert!(parse_canonical(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.244.0.0/16")));
        assert!(overlaps(&n("10.244.0.0/16"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.244.0.0/16"), &n("10.245.0.0/16")));
        assert!(overlaps(&n("192.168.56.0/24"), &n("192.168.56.128/25")));
    }

    #[test]
    fn pod_pool_starts_at_well_known_slot_and_wraps() {
        let pool = Pool::starting_at(n("10.240.0.0/12"), 16, "10.244.0.0".parse().unwrap()).unwrap();
        assert_eq!(pool.capacity(), 16);
        let slots: Vec<_> = pool.slots().collect();
        assert_eq!(slots[0], n("10.244.0.0/16"));
        assert_eq!(slots[1], n("10.245.0.0/16"));
        assert_eq!(slots[11], n("10.255.0.0/16"));
        assert_eq!(slots[12], n("10.240.0.0/16"));
        assert_eq!(slots[15], n("10.243.0.0/16"));
        assert_eq!(pool.index_of(&n("10.240.0.0/16")), Some(12));
        assert_eq!(pool.index_of(&n("10.244.0.0/16")), Some(0));
        assert_eq!(pool.index_of(&n("10.244.0.0/17")), None);
    }

    #[test]
    fn host_pool_has_eight_slots() {
        let pool = Pool::new(n("192.168.56.0/21"), 24).unwrap();
        assert_eq!(pool.capacity(), 8);
        assert_eq!(pool.slot(7), n("192.168.63.0/24"));
    }

    #[test]
    fn prefix_must_fit() {
        assert!(Pool::new(n("10.96.0.0/12"), 8).is_err());
        assert!(Pool::new(n("10.96.0.0/12"), 31).is_err());
    }

    #[test]
    fn gateway_and_offsets() {
        assert_eq!(gateway(&n("192.168.57.0/24")), "192.168.57.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(nth_address(&n("192.168.57.0/24"), 20), Some("192.168.57.20".parse().unwrap()));
        assert_eq!(nth_address(&n("192.168.57.0/28"), 20), None);
        assert_eq!(offset_in(&n("192.168.57.0/24"), "192.168.57.12".parse().unwrap()), Some(12));
    }
}
