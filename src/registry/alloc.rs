//! Pure allocation: given what everyone else holds, which networks an instance gets. No I/O,
//! no clock: the caller passes the occupied networks in.
//!
//! Rule: in each pool, the first free slot in the pool's order whose CIDR overlaps no CIDR of
//! any kind held by anyone else (subnets, pod and service CIDRs, management networks, the host's
//! own networks), nor the instance's own other networks. A pinned CIDR is checked against the
//! same set and refused with the name of what it collides with.

use std::fmt;

use crate::net::{self, Ipv4Net, Pool};

use super::{Allocation, Kind, Pools, Want, Wants};

/// Who holds a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Another registry entry.
    Instance {
        /// Its name.
        name: String,
        /// Which of its networks.
        kind: Kind,
        /// `allocated`, or `reserved until <time> by <who>`.
        status: String,
    },
    /// The host itself (an interface address or a route).
    Host {
        /// `interface eth0 address 192.0.2.2/24`, `route 10.0.0.0/8 via …`.
        source: String,
    },
    /// Another network of the same instance.
    Own {
        /// Which one.
        kind: Kind,
    },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Instance { name, kind, status } => {
                write!(f, "the {} of instance `{name}` ({status})", kind.attribute())
            }
            Holder::Host { source } => write!(f, "the host's {source}"),
            Holder::Own { kind } => write!(f, "this instance's own {}", kind.attribute()),
        }
    }
}

impl Holder {
    /// Short name for lists (`acme`, `host route …`).
    pub fn short(&self) -> String {
        match self {
            Holder::Instance { name, .. } => name.clone(),
            Holder::Host { source } => format!("host {source}"),
            Holder::Own { kind } => format!("own {}", kind.attribute()),
        }
    }
}

/// A network somebody holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupied {
    /// The network.
    pub cidr: Ipv4Net,
    /// Who holds it.
    pub holder: Holder,
}

/// Why an allocation cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// A pinned (or previously planned) CIDR overlaps something.
    Conflict {
        /// The instance's attribute.
        kind: Kind,
        /// The CIDR asked for.
        cidr: Ipv4Net,
        /// The CIDR it overlaps.
        other: Ipv4Net,
        /// Who holds that.
        holder: Holder,
    },
    /// No free slot left in a pool.
    Exhausted {
        /// Which pool.
        kind: Kind,
        /// The pool.
        pool: Ipv4Net,
        /// Slot prefix.
        prefix: u8,
        /// Number of slots.
        capacity: u64,
        /// Who holds the slots (deduplicated, in pool order).
        holders: Vec<String>,
    },
    /// A pinned CIDR has host bits set (`10.244.3.0/16` instead of `10.244.0.0/16`).
    NotCanonical {
        /// The attribute.
        kind: Kind,
        /// The CIDR asked for.
        cidr: Ipv4Net,
    },
    /// A pinned CIDR lies in a special-purpose range (loopback, multicast, …).
    SpecialPurpose {
        /// The attribute.
        kind: Kind,
        /// The CIDR asked for.
        cidr: Ipv4Net,
        /// The range it touches.
        range: net::SpecialRange,
    },
    /// A pinned CIDR has the wrong size.
    WrongPrefix {
        /// The attribute.
        kind: Kind,
        /// The CIDR asked for.
        cidr: Ipv4Net,
        /// The prefix the pool hands out.
        expected: u8,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Conflict {
                kind,
                cidr,
                other,
                holder,
            } => write!(
                f,
                "{} {cidr} overlaps {other}, {holder}",
                kind.attribute()
            ),
            AllocError::Exhausted {
                kind,
                pool,
                prefix,
                capacity,
                holders,
            } => write!(
                f,
                "{} {pool} is full: all {capacity} /{prefix} slots are taken (held by: {}); \
                 destroy an instance, drop stale reservations (`terraform-provider-homelab reservations list`), \
                 or configure a larger {}",
                kind.pool_attribute(),
                if holders.is_empty() { "-".to_string() } else { holders.join(", ") },
                kind.pool_attribute()
            ),
            AllocError::NotCanonical { kind, cidr } => write!(
                f,
                "{} {cidr} has host bits set: the /{} network that contains it is {}",
                kind.attribute(),
                cidr.prefix_len(),
                cidr.trunc()
            ),
            AllocError::SpecialPurpose { kind, cidr, range } => write!(
                f,
                "{} {cidr} overlaps the special-purpose range {range}: no lab network can work there",
                kind.attribute()
            ),
            AllocError::WrongPrefix {
                kind,
                cidr,
                expected,
            } => write!(
                f,
                "{} {cidr} must be a /{expected} (the provider's {} is {expected})",
                kind.attribute(),
                kind.prefix_attribute()
            ),
        }
    }
}

impl std::error::Error for AllocError {}

/// Sorted, merged address ranges (inclusive), for fast "is this slot free" queries.
#[derive(Debug, Default)]
pub struct Ranges {
    ranges: Vec<(u64, u64)>,
}

fn bounds(net: &Ipv4Net) -> (u64, u64) {
    (
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.broadcast())),
    )
}

impl Ranges {
    /// Ranges covering `nets`.
    pub fn new<'a>(nets: impl IntoIterator<Item = &'a Ipv4Net>) -> Ranges {
        let mut v: Vec<(u64, u64)> = nets.into_iter().map(bounds).collect();
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match merged.last_mut() {
                Some(last) if s <= last.1 + 1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ranges { ranges: merged }
    }

    /// The first range ending at or after `addr`.
    fn first_ending_after(&self, addr: u64) -> Option<(u64, u64)> {
        let i = self.ranges.partition_point(|&(_, e)| e < addr);
        self.ranges.get(i).copied()
    }

    /// First free slot of `pool` at or after pool-order index `from` and before `to`.
    fn first_free_between(&self, pool: &Pool, lo: u64, hi: u64) -> Option<u64> {
        // lo/hi are raw addresses (slot aligned), hi exclusive.
        let size = 1u64 << (32 - u32::from(pool.prefix));
        let mut cand = lo;
        while cand < hi {
            match self.first_ending_after(cand) {
                Some((s, e)) if s < cand + size => {
                    cand = (e + 1).div_ceil(size) * size;
                }
                _ => return Some(cand),
            }
        }
        None
    }

    /// First free slot of `pool` in pool order (starting at `pool.first`, wrapping round).
    pub fn first_free(&self, pool: &Pool) -> Option<Ipv4Net> {
        let (start, end) = bounds(&pool.cidr);
        let first = u64::from(u32::from(pool.first.network()));
        let found = self
            .first_free_between(pool, first, end + 1)
            .or_else(|| self.first_free_between(pool, start, first))?;
        Some(Ipv4Net::new(std::net::Ipv4Addr::from(found as u32), pool.prefix).expect("valid prefix"))
    }
}

/// Pools of at most this many slots are searched with a bitmap ([`SlotMap`], 512 KiB at
/// most), larger ones with sorted ranges ([`Ranges`]).
const BITMAP_MAX_SLOTS: u64 = 1 << 22;

/// Which slots of one pool are taken, one bit per slot (in address order). Building it is
/// linear in the number of held networks, with no sorting: the fast path of [`assign`].
#[derive(Debug)]
pub struct SlotMap {
    words: Vec<u64>,
    start: u64,
    end: u64,
    shift: u32,
}

impl SlotMap {
    /// The slots of `pool` overlapped by any of `held` (inclusive address bounds).
    pub fn new(pool: &Pool, held: impl IntoIterator<Item = (u64, u64)>) -> SlotMap {
        let (start, end) = bounds(&pool.cidr);
        let mut map = SlotMap {
            words: vec![0; pool.capacity().div_ceil(64) as usize],
            start,
            end,
            shift: 32 - u32::from(pool.prefix),
        };
        for (s, e) in held {
            if e < start || s > end {
                continue;
            }
            let lo = (s.max(start) - start) >> map.shift;
            let hi = (e.min(end) - start) >> map.shift;
            map.set(lo, hi);
        }
        map
    }

    /// Mark slots `lo..=hi`.
    fn set(&mut self, lo: u64, hi: u64) {
        let (lw, hw) = ((lo / 64) as usize, (hi / 64) as usize);
        for w in lw..=hw {
            let from = if w == lw { lo % 64 } else { 0 };
            let to = if w == hw { hi % 64 } else { 63 };
            self.words[w] |= (u64::MAX >> (63 - to)) & (u64::MAX << from);
        }
    }

    /// First clear bit at index `lo` or later, before `hi`.
    fn first_clear(&self, lo: u64, hi: u64) -> Option<u64> {
        let mut i = lo;
        while i < hi {
            let w = self.words[(i / 64) as usize] | ((1u64 << (i % 64)) - 1);
            if w != u64::MAX {
                let found = (i / 64) * 64 + u64::from(w.trailing_ones());
                return (found < hi).then_some(found);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// First free slot of `pool` in pool order (starting at `pool.first`, wrapping round).
    pub fn first_free(&self, pool: &Pool) -> Option<Ipv4Net> {
        let capacity = (self.end - self.start + 1) >> self.shift;
        let first = (u64::from(u32::from(pool.first.network())) - self.start) >> self.shift;
        let i = self
            .first_clear(first, capacity)
            .or_else(|| self.first_clear(0, first))?;
        let addr = self.start + (i << self.shift);
        Some(Ipv4Net::new(std::net::Ipv4Addr::from(addr as u32), pool.prefix).expect("valid prefix"))
    }
}

/// Find the first thing in `occupied` that overlaps `cidr`.
pub fn find_overlap<'a>(occupied: &'a [Occupied], cidr: &Ipv4Net) -> Option<&'a Occupied> {
    occupied.iter().find(|o| net::overlaps(&o.cidr, cidr))
}

/// The first thing held by others, else by the instance itself, that overlaps `cidr`.
fn first_overlap(occupied: &[Occupied], own: &[Occupied], cidr: &Ipv4Net) -> Option<Occupied> {
    find_overlap(occupied, cidr)
        .or_else(|| find_overlap(own, cidr))
        .cloned()
}

/// Who holds the slots of a full pool: distinct short names in pool order (from `pool.first`,
/// wrapping round), at most 32 and then "…".
fn holders_in_pool_order(pool: &Pool, occupied: &[Occupied], own: &[Occupied]) -> Vec<String> {
    let (start, end) = bounds(&pool.cidr);
    let span = end - start + 1;
    let first = u64::from(u32::from(pool.first.network())) - start;
    let mut inside: Vec<(u64, &Occupied)> = occupied
        .iter()
        .chain(own)
        .filter(|o| net::overlaps(&o.cidr, &pool.cidr))
        .map(|o| {
            let at = bounds(&o.cidr).0.max(start) - start;
            ((at + span - first) % span, o)
        })
        .collect();
    inside.sort_by_key(|(k, _)| *k);
    let mut holders: Vec<String> = Vec::new();
    for (_, o) in inside {
        let h = o.holder.short();
        if holders.contains(&h) {
            continue;
        }
        if holders.len() == 32 {
            holders.push("…".into());
            break;
        }
        holders.push(h);
    }
    holders
}

/// Choose networks for every wanted kind. `prefer` holds values to keep when still free
/// (a reservation being renewed, or the name's networks before it was last released).
pub fn assign(
    pools: &Pools,
    wants: &Wants,
    occupied: &[Occupied],
    prefer: Option<&Allocation>,
) -> Result<Allocation, AllocError> {
    // The instance's own networks chosen so far, kept apart from `occupied` (which holds every
    // network of every other instance: copying it costs more than the allocation itself).
    let mut own: Vec<Occupied> = Vec::with_capacity(4);
    // Pinned values first: they are not negotiable, automatic ones fit around them.
    for (kind, want) in wants.iter() {
        if let Want::Pinned(cidr) = want {
            let pool = pools.get(kind);
            if cidr.trunc() != cidr {
                return Err(AllocError::NotCanonical { kind, cidr });
            }
            if let Some(range) = net::special_range(&cidr) {
                return Err(AllocError::SpecialPurpose { kind, cidr, range });
            }
            if cidr.prefix_len() != pool.prefix {
                return Err(AllocError::WrongPrefix {
                    kind,
                    cidr,
                    expected: pool.prefix,
                });
            }
            if let Some(o) = first_overlap(occupied, &own, &cidr) {
                return Err(AllocError::Conflict {
                    kind,
                    cidr,
                    other: o.cidr,
                    holder: o.holder,
                });
            }
            own.push(Occupied {
                cidr,
                holder: Holder::Own { kind },
            });
        }
    }
    for (kind, want) in wants.iter() {
        if !matches!(want, Want::Auto) {
            continue;
        }
        let pool = pools.get(kind);
        let preferred = prefer
            .and_then(|p| p.get(kind))
            .filter(|c| pool.index_of(c).is_some() && first_overlap(occupied, &own, c).is_none());
        let cidr = match preferred {
            Some(c) => c,
            None => {
                let held = occupied.iter().chain(&own).map(|o| bounds(&o.cidr));
                let free = if pool.capacity() <= BITMAP_MAX_SLOTS {
                    SlotMap::new(pool, held).first_free(pool)
                } else {
                    let (start, end) = bounds(&pool.cidr);
                    let relevant: Vec<Ipv4Net> = occupied
                        .iter()
                        .chain(&own)
                        .filter(|o| {
                            let (s, e) = bounds(&o.cidr);
                            s <= end && e >= start
                        })
                        .map(|o| o.cidr)
                        .collect();
                    Ranges::new(&relevant).first_free(pool)
                };
                match free {
                    Some(c) => c,
                    None => {
                        return Err(AllocError::Exhausted {
                            kind,
                            pool: pool.cidr,
                            prefix: pool.prefix,
                            capacity: pool.capacity(),
                            holders: holders_in_pool_order(pool, occupied, &own),
                        });
                    }
                }
            }
        };
        own.push(Occupied {
            cidr,
            holder: Holder::Own { kind },
        });
    }
    let pick = |k: Kind| {
        own.iter().find_map(|o| match o.holder {
            Holder::Own { kind } if kind == k => Some(o.cidr),
            _ => None,
        })
    };
    Ok(Allocation {
        // `Wants` always holds the three cluster networks, so each was chosen above.
        subnet: pick(Kind::Subnet).expect("subnet is always wanted"),
        pod_cidr: pick(Kind::PodCidr).expect("pod_cidr is always wanted"),
        service_cidr: pick(Kind::ServiceCidr).expect("service_cidr is always wanted"),
        mgmt_cidr: pick(Kind::MgmtCidr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{validate, RawSettings};

    fn pools() -> Pools {
        validate(&RawSettings::default()).unwrap().pools
    }

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn inst(name: &str, kind: Kind, cidr: &str) -> Occupied {
        Occupied {
            cidr: n(cidr),
            holder: Holder::Instance {
                name: name.into(),
                kind,
                status: "allocated".into(),
            },
        }
    }

    #[test]
    fn empty_registry_gets_the_documented_first_slots() {
        let a = assign(&pools(), &Wants::auto(false), &[], None).unwrap();
        assert_eq!(a.subnet, n("192.168.56.0/24"));
        assert_eq!(a.pod_cidr, n("10.244.0.0/16"));
        assert_eq!(a.service_cidr, n("10.96.0.0/16"));
        assert_eq!(a.mgmt_cidr, None);
    }

    #[test]
    fn allocation_skips_slot_held_by_other_kind() {
        // Someone pinned a service CIDR inside the pod pool's first slot.
        let occ = vec![inst("weird", Kind::ServiceCidr, "10.244.128.0/17")];
        let a = assign(&pools(), &Wants::auto(false), &occ, None).unwrap();
        assert_eq!(a.pod_cidr, n("10.245.0.0/16"));
    }

    #[test]
    fn allocation_skips_host_network() {
        let occ = vec![Occupied {
            cidr: n("192.168.56.0/24"),
            holder: Holder::Host {
                source: "interface eth1 address 192.168.56.7/24".into(),
            },
        }];
        let a = assign(&pools(), &Wants::auto(false), &occ, None).unwrap();
        assert_eq!(a.subnet, n("192.168.57.0/24"));
    }

    #[test]
    fn pinned_overlap_names_holder_attribute_and_cidr() {
        let occ = vec![inst("globex", Kind::ServiceCidr, "10.97.0.0/16")];
        let mut w = Wants::auto(false);
        w.pod_cidr = Want::Pinned(n("10.97.0.0/16"));
        let err = assign(&pools(), &w, &occ, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pod_cidr 10.97.0.0/16"), "{text}");
        assert!(text.contains("service_cidr of instance `globex`"), "{text}");
    }

    #[test]
    fn pinned_values_of_one_instance_must_be_disjoint() {
        let mut w = Wants::auto(false);
        w.pod_cidr = Want::Pinned(n("10.100.0.0/16"));
        w.service_cidr = Want::Pinned(n("10.100.0.0/16"));
        // 10.100/16 is outside the default pod pool; the prefix matches, so it is accepted as pinned.
        let err = assign(&pools(), &w, &[], None).unwrap_err();
        assert!(err.to_string().contains("this instance's own pod_cidr"), "{err}");
    }

    #[test]
    fn exhausted_pool_names_pool_capacity_and_holders() {
        let occ: Vec<Occupied> = (0..8)
            .map(|i| inst(&format!("i{i}"), Kind::Subnet, &format!("192.168.{}.0/24", 56 + i)))
            .collect();
        let err = assign(&pools(), &Wants::auto(false), &occ, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("host_pool 192.168.56.0/21 is full"), "{text}");
        assert!(text.contains("all 8 /24 slots"), "{text}");
        assert!(text.contains("i0, i1"), "{text}");
    }

    #[test]
    fn pinned_cidr_with_host_bits_is_refused_naming_the_network() {
        let mut w = Wants::auto(false);
        w.service_cidr = Want::Pinned(n("10.97.3.0/16"));
        let err = assign(&pools(), &w, &[], None).unwrap_err();
        assert_eq!(err, AllocError::NotCanonical { kind: Kind::ServiceCidr, cidr: n("10.97.3.0/16") });
        let text = err.to_string();
        assert!(text.contains("service_cidr 10.97.3.0/16 has host bits set"), "{text}");
        assert!(text.contains("10.97.0.0/16"), "{text}");
    }

    #[test]
    fn exhausted_holders_are_listed_in_pool_order_from_the_first_slot() {
        // Pod slots in pool order: 10.244 … 10.255, then 10.240 … 10.243.
        let mut occ: Vec<Occupied> = (240..=255)
            .map(|o| inst(&format!("p{o}"), Kind::PodCidr, &format!("10.{o}.0.0/16")))
            .collect();
        occ.reverse();
        let err = assign(&pools(), &Wants::auto(false), &occ, None).unwrap_err();
        let AllocError::Exhausted { holders, kind, .. } = err else { panic!("{err}") };
        assert_eq!(kind, Kind::PodCidr);
        let expected: Vec<String> = (244..=255).chain(240..=243).map(|o| format!("p{o}")).collect();
        assert_eq!(holders, expected);
    }

    #[test]
    fn exhausted_holders_are_capped() {
        let raw = RawSettings {
            host_pool: Some("10.0.0.0/16".into()),
            ..Default::default()
        };
        let pools = validate(&raw).unwrap().pools;
        let occ: Vec<Occupied> = (0..256)
            .map(|i| inst(&format!("i{i:03}"), Kind::Subnet, &format!("10.0.{i}.0/24")))
            .collect();
        let AllocError::Exhausted { holders, capacity, .. } =
            assign(&pools, &Wants::auto(false), &occ, None).unwrap_err()
        else {
            panic!("expected exhaustion")
        };
        assert_eq!(capacity, 256);
        assert_eq!(holders.len(), 33);
        assert_eq!(holders[0], "i000");
        assert_eq!(holders[32], "…");
    }

    #[test]
    fn pod_pool_wraps_round_after_its_last_slot() {
        let occ: Vec<Occupied> = (244..=255)
            .map(|o| inst(&format!("p{o}"), Kind::PodCidr, &format!("10.{o}.0.0/16")))
            .collect();
        let a = assign(&pools(), &Wants::auto(false), &occ, None).unwrap();
        assert_eq!(a.pod_cidr, n("10.240.0.0/16"));
    }

    #[test]
    fn preferred_values_are_kept_when_free() {
        let prefer = Allocation {
            subnet: n("192.168.60.0/24"),
            pod_cidr: n("10.250.0.0/16"),
            service_cidr: n("10.99.0.0/16"),
            mgmt_cidr: None,
        };
        let a = assign(&pools(), &Wants::auto(false), &[], Some(&prefer)).unwrap();
        assert_eq!(a, prefer);
        let occ = vec![inst("x", Kind::Subnet, "192.168.60.0/24")];
        let a = assign(&pools(), &Wants::auto(false), &occ, Some(&prefer)).unwrap();
        assert_eq!(a.subnet, n("192.168.56.0/24"));
        assert_eq!(a.pod_cidr, n("10.250.0.0/16"));
    }

    /// The first free slot by brute force: every slot in pool order against every network.
    fn first_free_slowly(pool: &Pool, held: &[Ipv4Net]) -> Option<Ipv4Net> {
        pool.slots().find(|s| held.iter().all(|h| !net::overlaps(h, s)))
    }

    proptest::proptest! {
        #[test]
        fn bitmap_and_ranges_find_the_same_first_free_slot_as_brute_force(
            pool_prefix in 20u8..=26,
            slot_extra in 0u8..=4,
            first in 0u64..64,
            held in proptest::collection::vec((0u32..(1 << 14), 16u8..=30), 0..40),
        ) {
            let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
            let cidr = Ipv4Net::new(std::net::Ipv4Addr::from(base), pool_prefix).unwrap();
            let pool0 = Pool::new(cidr, pool_prefix + slot_extra).unwrap();
            let pool = Pool::starting_at(cidr, pool0.prefix, pool0.slot(first % pool0.capacity()).network()).unwrap();
            let held: Vec<Ipv4Net> = held
                .into_iter()
                .map(|(off, p)| Ipv4Net::new(std::net::Ipv4Addr::from(base + (off << 4)), p).unwrap().trunc())
                .collect();
            let expected = first_free_slowly(&pool, &held);
            let bitmap = SlotMap::new(&pool, held.iter().map(bounds)).first_free(&pool);
            let ranges = Ranges::new(&held).first_free(&pool);
            proptest::prop_assert_eq!(bitmap, expected);
            proptest::prop_assert_eq!(ranges, expected);
        }
    }

    #[test]
    fn slot_map_marks_networks_larger_than_a_slot_across_words() {
        let pool = Pool::new(n("10.0.0.0/16"), 24).unwrap();
        // 10.0.0.0/17 covers slots 0..=127: two whole words.
        let map = SlotMap::new(&pool, [bounds(&n("10.0.0.0/17")), bounds(&n("10.0.130.0/23"))]);
        assert_eq!(map.first_free(&pool), Some(n("10.0.128.0/24")));
        let full = SlotMap::new(&pool, [bounds(&n("10.0.0.0/8"))]);
        assert_eq!(full.first_free(&pool), None);
    }

    #[test]
    fn ranges_find_first_free_fast_path() {
        let pool = Pool::new(n("10.0.0.0/8"), 24).unwrap();
        let held: Vec<Ipv4Net> = (0..10_000u32)
            .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap())
            .collect();
        let r = Ranges::new(held.iter());
        assert_eq!(r.first_free(&pool), Some(n("10.39.16.0/24")));
    }
}
