//! What every store must give the registry, whatever it stores in: refused overlaps naming the
//! holder, a pool handed out to distinct names until it is exhausted, and a second reader of the
//! same store (a fresh store value: another process, another lab host) that sees exactly what the
//! writer holds. Run on each store (see the suites in `tests/mod.rs`).

use super::*;

#[test]
fn instance_registry_refuses_overlapping_subnets() {
    let lab = lab();
    lab.create("a");
    lab.create("b");
    let a = lab.registry.get("a").unwrap().expect("a is registered").allocation;
    let b = lab.registry.get("b").unwrap().expect("b is registered").allocation;
    assert_ne!(a.subnet, b.subnet);
    assert!(!crate::net::overlaps(&a.subnet, &b.subnet));
    // A third name asking for a's subnet is refused, naming a.
    let wants = Wants {
        subnet: Want::Pinned(a.subnet),
        ..Wants::auto(false)
    };
    let err = lab.registry.reserve("c", &wants, "netns", &[]).unwrap_err();
    assert!(err.to_string().contains("the subnet of instance `a` (allocated)"), "{err}");
}

#[test]
fn registry_never_gives_two_names_the_same_subnet() {
    let lab = lab();
    let mut got = Vec::new();
    for i in 0.. {
        match lab.registry.reserve(&format!("client{i}"), &Wants::auto(false), "netns", &[]) {
            Ok(Planned::Reserved(e)) => {
                lab.registry
                    .claim(&e.name, &e.allocation, "netns", lab_record(), &[])
                    .unwrap();
                got.push(e.allocation.subnet);
            }
            Err(RegistryError::Alloc { source: AllocError::Exhausted { kind, .. }, .. }) => {
                assert_eq!(kind, Kind::Subnet);
                break;
            }
            other => panic!("client{i}: {other:?}"),
        }
    }
    assert_eq!(got.len(), 8, "the default host pool holds 8 subnets");
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), got.len(), "{got:?}");
    // A fresh reader of the same store sees the same, sound registry.
    let again = lab.fresh();
    let doc = again.registry.snapshot().unwrap();
    assert_eq!(doc, lab.registry.snapshot().unwrap());
    assert!(overlaps_among_holders(&doc, again.registry.now()).is_empty());
    assert_eq!(again.registry.verify_events().unwrap().events, 16);
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_fresh_reader_sees_exactly_what_the_writer_holds() {
    let lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({"why": "test"})).unwrap();
    lab.create("initech");
    lab.registry.release("initech").unwrap();
    lab.advance(Duration::from_nanos(1_500));
    lab.reserve("hooli");
    let fresh = lab.fresh();
    assert_eq!(fresh.registry.snapshot().unwrap(), lab.registry.snapshot().unwrap());
    assert_eq!(fresh.store.events().unwrap(), lab.store.events().unwrap());
}
