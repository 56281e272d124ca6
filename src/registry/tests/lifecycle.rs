//! The reservation lifecycle (reserve, renew, expire, claim, release), names, federation tags
//! and the seed's architecture test, with a manual clock: run on each store (see the suites in
//! `tests/mod.rs`).
//!
//! One piece (about 900 lines) because it is one story told in order: each test builds on the
//! same small fixtures (`Lab`, the manual clock) and walks one entry through the lifecycle;
//! split by step, every file would repeat the fixtures and lose the order.

use super::*;

fn pinned_subnet(cidr: &str) -> Wants {
    Wants {
        subnet: Want::Pinned(n(cidr)),
        ..Wants::auto(false)
    }
}

fn host_lan() -> Vec<External> {
    vec![External {
        cidr: n("192.168.56.0/24"),
        source: "interface eth1 address 192.168.56.7/24".into(),
    }]
}

// ---------------------------------------------------------------------------------------------
// The seed's architecture test (part 38), on the in-memory registry.
// ---------------------------------------------------------------------------------------------

/// The seed's `TestData.MultipleK8sInstances()`: a set of client instances.
fn multiple_k8s_instances() -> Vec<&'static str> {
    vec!["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]
}

#[test]
fn no_two_instances_have_overlapping_pod_cidrs() {
    let lab = lab();
    for name in multiple_k8s_instances() {
        lab.create(name);
    }
    let all = lab.registry.snapshot().unwrap();
    assert_eq!(all.instances.len(), multiple_k8s_instances().len());
    // The seed's numbers: the first instance gets the well-known 10.244.0.0/16, the next 10.245.
    assert_eq!(all.instances["acme"].allocation.pod_cidr, n("10.244.0.0/16"));
    assert_eq!(all.instances["globex"].allocation.pod_cidr, n("10.245.0.0/16"));
    assert_eq!(all.instances["globex"].allocation.service_cidr, n("10.97.0.0/16"));
    // Every pair of entries, every pair of kinds (pod against pod, pod against service, pod
    // against subnet, …): no overlap.
    let mut pairs = 0;
    for a in all.instances.values() {
        for b in all.instances.values().filter(|b| b.name != a.name) {
            for (ka, ca) in a.allocation.iter() {
                for (kb, cb) in b.allocation.iter() {
                    pairs += 1;
                    assert!(
                        !crate::net::overlaps(&ca, &cb),
                        "instance {} {} ({ca}) overlaps {} {} ({cb})",
                        a.name,
                        ka.attribute(),
                        b.name,
                        kb.attribute()
                    );
                }
            }
        }
    }
    assert_eq!(pairs, 8 * 7 * 9);
}

// ---------------------------------------------------------------------------------------------
// Reserve
// ---------------------------------------------------------------------------------------------

#[test]
fn first_reservation_on_empty_registry_gets_documented_defaults() {
    let lab = lab();
    let e = lab.reserve("acme");
    assert_eq!(e.status, Status::Reserved);
    assert_eq!(e.allocation.subnet, n("192.168.56.0/24"));
    assert_eq!(e.allocation.pod_cidr, n("10.244.0.0/16"));
    assert_eq!(e.allocation.service_cidr, n("10.96.0.0/16"));
    assert_eq!(e.allocation.mgmt_cidr, None);
    let r = e.reservation.as_ref().expect("a reservation records when and by whom");
    assert_eq!(r.reserved_at, T0);
    assert_eq!(r.expires_at, T0 + TTL);
    assert_eq!(r.by, actor());
    assert_eq!(lab.actions(), ["instance.reserve acme"]);
    assert_eq!(lab.registry.get("acme").unwrap(), Some(e));
}

#[test]
fn reserve_same_name_again_keeps_values_and_extends_expiry() {
    let lab = lab();
    let first = lab.reserve("acme");
    lab.reserve("globex");
    lab.advance(Duration::from_secs(600));
    let again = lab.reserve("acme");
    assert_eq!(again.allocation, first.allocation);
    assert_eq!(again.created_at, first.created_at, "renewal keeps the creation time");
    let r = again.reservation.unwrap();
    assert_eq!(r.expires_at, T0 + Duration::from_secs(600) + TTL);
    let events = lab.store.events().unwrap();
    assert_eq!(events.len(), 3, "one event per reservation, renewals included");
    assert_eq!(events[2].details["renewed"], serde_json::json!(true));
    assert_eq!(events[0].details["renewed"], serde_json::json!(false));
}

#[test]
fn second_name_gets_the_next_slot_of_every_pool() {
    let lab = lab();
    lab.reserve("acme");
    let g = lab.reserve("globex");
    assert_eq!(g.allocation.subnet, n("192.168.57.0/24"));
    assert_eq!(g.allocation.pod_cidr, n("10.245.0.0/16"));
    assert_eq!(g.allocation.service_cidr, n("10.97.0.0/16"));
}

#[test]
fn live_reservation_holds_its_networks_against_other_names() {
    let lab = lab();
    // A pinned reservation: no other name takes it (automatic ones yield to pins, see
    // `takeover`).
    lab.registry.reserve("acme", &pinned_subnet("192.168.56.0/24"), "netns", &[]).unwrap();
    lab.advance(TTL - Duration::from_secs(1));
    let auto = lab.reserve("initech");
    assert_ne!(auto.allocation.subnet, n("192.168.56.0/24"));
    let err = lab
        .registry
        .reserve("globex", &pinned_subnet("192.168.56.0/24"), "netns", &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RegistryError::Alloc { source: AllocError::Conflict { .. }, .. }),
        "{err:?}"
    );
    assert!(text.contains("subnet of instance `acme` (reserved until"), "{text}");
    assert!(text.contains("192.168.56.0/24"), "{text}");
}

#[test]
fn expired_reservation_is_free_again() {
    let lab = lab();
    let acme = lab.reserve("acme");
    lab.advance(TTL);
    // At its expiry instant the reservation no longer holds: globex gets the same networks.
    let globex = lab.reserve("globex");
    assert_eq!(globex.allocation, acme.allocation);
    // The expired entry stays visible (the data source shows it) until dropped or replaced.
    let doc = lab.registry.snapshot().unwrap();
    assert!(!doc.instances["acme"].holds(lab.registry.now()));
    assert!(doc.instances["acme"]
        .describe_status(lab.registry.now())
        .starts_with("reservation expired until"));
}

#[test]
fn expired_reservation_whose_values_are_still_free_is_renewed_with_them() {
    let lab = lab();
    let first = lab.reserve("acme");
    lab.advance(TTL * 3);
    let again = lab.reserve("acme");
    assert_eq!(again.allocation, first.allocation);
    assert_eq!(again.reservation.unwrap().expires_at, T0 + TTL * 3 + TTL);
}

#[test]
fn replanning_after_expiry_and_takeover_reports_the_new_holder_then_gets_free_values() {
    let lab = lab();
    let acme = lab.reserve("acme");
    lab.advance(TTL + Duration::from_secs(1));
    let globex = lab.create("globex");
    assert_eq!(globex.allocation, acme.allocation);
    let err = lab
        .registry
        .reserve("acme", &Wants::auto(false), "netns", &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::ReservationLost { .. }), "{err:?}");
    assert!(text.contains("subnet 192.168.56.0/24 is now held by the subnet of instance `globex`"), "{text}");
    assert!(text.contains("run `terraform plan` again"), "{text}");
    // The stale reservation was dropped, and the drop recorded.
    assert_eq!(lab.registry.get("acme").unwrap(), None);
    assert_eq!(
        lab.actions(),
        [
            "instance.reserve acme",
            "instance.reserve globex",
            "instance.allocate globex",
            "instance.reservation_lost acme"
        ]
    );
    // The next plan gets free values.
    let fresh = lab.reserve("acme");
    assert_eq!(fresh.allocation.subnet, n("192.168.57.0/24"));
    assert!(overlaps_among_holders(&lab.registry.snapshot().unwrap(), lab.registry.now()).is_empty());
}

#[test]
fn reserve_of_allocated_name_answers_existing_without_writing() {
    let lab = lab();
    let acme = lab.create("acme");
    let before = lab.state();
    match lab.registry.reserve("acme", &Wants::auto(false), "netns", &[]).unwrap() {
        Planned::Existing { entry, allocation } => {
            assert_eq!(entry, acme);
            assert_eq!(allocation, acme.allocation);
        }
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(lab.state(), before);
}

#[test]
fn allocated_instance_whose_bridge_is_a_host_network_keeps_its_values() {
    // The lab's own bridge shows up among the host's networks: it is not a conflict.
    let lab = lab();
    let acme = lab.create("acme");
    let own_bridge = vec![External {
        cidr: acme.allocation.subnet,
        source: "interface hl-acme address 192.168.56.1/24".into(),
    }];
    match lab.registry.reserve("acme", &Wants::auto(false), "netns", &own_bridge).unwrap() {
        Planned::Existing { allocation, .. } => assert_eq!(allocation, acme.allocation),
        other => panic!("expected Existing, got {other:?}"),
    }
}

#[test]
fn pinned_values_are_kept_and_automatic_ones_fit_around_them() {
    let lab = lab();
    let wants = Wants {
        subnet: Want::Pinned(n("192.168.56.0/24")),
        pod_cidr: Want::Pinned(n("10.96.0.0/16")),
        service_cidr: Want::Auto,
        mgmt_cidr: None,
    };
    let Planned::Reserved(e) = lab.registry.reserve("acme", &wants, "netns", &[]).unwrap() else {
        panic!("expected a reservation")
    };
    assert_eq!(e.allocation.subnet, n("192.168.56.0/24"));
    assert_eq!(e.allocation.pod_cidr, n("10.96.0.0/16"));
    // Its pod CIDR sits in the service pool's first slot: the service CIDR skips it.
    assert_eq!(e.allocation.service_cidr, n("10.97.0.0/16"));
    // And other instances skip it too, whatever the kind.
    let g = lab.reserve("globex");
    assert_eq!(g.allocation.service_cidr, n("10.98.0.0/16"));
    assert_eq!(g.allocation.subnet, n("192.168.57.0/24"));
}

#[test]
fn pin_overlapping_another_kind_names_holder_attribute_and_cidr() {
    let lab = lab();
    lab.create("acme");
    let wants = Wants {
        pod_cidr: Want::Pinned(n("10.96.0.0/16")),
        ..Wants::auto(false)
    };
    let err = lab.registry.reserve("globex", &wants, "netns", &[]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("instance `globex`"), "{text}");
    assert!(text.contains("pod_cidr 10.96.0.0/16 overlaps 10.96.0.0/16"), "{text}");
    assert!(text.contains("the service_cidr of instance `acme` (allocated)"), "{text}");
}

#[test]
fn pin_with_wrong_prefix_is_refused_naming_the_prefix_attribute() {
    let lab = lab();
    let err = lab
        .registry
        .reserve("acme", &pinned_subnet("192.168.56.0/25"), "netns", &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("subnet 192.168.56.0/25 must be a /24"), "{text}");
    assert!(text.contains("host_prefix"), "{text}");
    assert!(lab.store.events().unwrap().is_empty());
}

#[test]
fn pin_with_host_bits_set_is_refused_suggesting_the_network() {
    let lab = lab();
    let err = lab
        .registry
        .reserve("acme", &pinned_subnet("192.168.56.7/24"), "netns", &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RegistryError::Alloc { source: AllocError::NotCanonical { .. }, .. }),
        "{err:?}"
    );
    assert!(text.contains("192.168.56.7/24"), "{text}");
    assert!(text.contains("192.168.56.0/24"), "{text}");
    assert_eq!(lab.state(), (Document::default(), vec![]));
}

#[test]
fn host_network_slot_is_skipped() {
    let lab = lab();
    let Planned::Reserved(e) = lab
        .registry
        .reserve("acme", &Wants::auto(false), "netns", &host_lan())
        .unwrap()
    else {
        panic!("expected a reservation")
    };
    assert_eq!(e.allocation.subnet, n("192.168.57.0/24"));
    let preview = lab.registry.preview("globex", &Wants::auto(false), &host_lan()).unwrap();
    assert_eq!(preview.allocation.subnet, n("192.168.58.0/24"));
}

#[test]
fn pin_on_a_host_network_is_refused_naming_the_interface() {
    let lab = lab();
    let err = lab
        .registry
        .reserve("acme", &pinned_subnet("192.168.56.0/24"), "netns", &host_lan())
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the host's interface eth1 address 192.168.56.7/24"), "{text}");
    assert!(lab.store.events().unwrap().is_empty());
}

#[test]
fn host_network_equal_to_an_expired_reservation_is_still_skipped() {
    // acme reserved 192.168.56.0/24 and let it expire; meanwhile the host got a LAN on that
    // very subnet. The slot belongs to nobody in the registry, but the host uses it.
    let lab = lab();
    lab.reserve("acme");
    lab.advance(TTL * 2);
    let Planned::Reserved(g) = lab
        .registry
        .reserve("globex", &Wants::auto(false), "netns", &host_lan())
        .unwrap()
    else {
        panic!("expected a reservation")
    };
    assert_eq!(g.allocation.subnet, n("192.168.57.0/24"));
    let err = lab
        .registry
        .claim(
            "initech",
            &Allocation {
                subnet: n("192.168.56.0/24"),
                pod_cidr: n("10.250.0.0/16"),
                service_cidr: n("10.100.0.0/16"),
                mgmt_cidr: None,
            },
            "netns",
            lab_record(),
            &host_lan(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("the host's interface eth1"), "{err}");
}

#[test]
fn exhausted_pool_is_named_with_capacity_and_holders() {
    let lab = lab();
    let names: Vec<String> = (0..8).map(|i| format!("lab{i}")).collect();
    for name in &names {
        lab.create(name);
    }
    let before = lab.state();
    let err = lab
        .registry
        .reserve("ninth", &Wants::auto(false), "netns", &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("instance `ninth`"), "{text}");
    assert!(text.contains("host_pool 192.168.56.0/21 is full: all 8 /24 slots are taken"), "{text}");
    assert!(text.contains("lab0, lab1, lab2"), "{text}");
    assert_eq!(lab.state(), before);
}

// ---------------------------------------------------------------------------------------------
// Claim
// ---------------------------------------------------------------------------------------------

#[test]
fn claim_turns_the_reservation_into_an_allocation_that_never_expires() {
    let lab = lab();
    let planned = lab.reserve("acme");
    let e = lab
        .registry
        .claim("acme", &planned.allocation, "netns", lab_record(), &[])
        .unwrap();
    assert_eq!(e.status, Status::Allocated);
    assert_eq!(e.allocation, planned.allocation);
    assert_eq!(e.reservation, None);
    assert_eq!(e.lab, Some(lab_record()));
    assert_eq!(lab.actions(), ["instance.reserve acme", "instance.allocate acme"]);
    lab.advance(TTL * 1000);
    let doc = lab.registry.snapshot().unwrap();
    assert!(doc.instances["acme"].holds(lab.registry.now()));
    let g = lab.reserve("globex");
    assert_ne!(g.allocation.subnet, e.allocation.subnet);
}

#[test]
fn saved_plan_after_expiry_and_takeover_is_refused_naming_new_holder() {
    let lab = lab();
    // `terraform plan -out` for acme…
    let saved_plan = lab.reserve("acme").allocation;
    // …not applied before the reservation expires; another configuration takes the networks.
    lab.advance(TTL + Duration::from_secs(60));
    let globex = lab.create("globex");
    assert_eq!(globex.allocation, saved_plan);
    let before = lab.state();
    // `terraform apply` of the saved plan.
    let err = lab
        .registry
        .claim("acme", &saved_plan, "netns", lab_record(), &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::ClaimConflict { .. }), "{err:?}");
    assert!(text.contains("instance `acme`"), "{text}");
    assert!(text.contains("subnet 192.168.56.0/24 overlaps 192.168.56.0/24, the subnet of instance `globex` (allocated)"), "{text}");
    assert!(text.contains("Nothing was built"), "{text}");
    assert_eq!(lab.state(), before, "a refused claim writes nothing");
}

#[test]
fn claim_refuses_values_taken_since() {
    // The planned values were reserved by another name after the plan's reservation expired:
    // the conflict names that reservation, with its expiry and who made it.
    let lab = lab();
    let planned = lab.reserve("acme").allocation;
    lab.advance(TTL);
    lab.reserve("globex");
    let err = lab
        .registry
        .claim("acme", &planned, "netns", lab_record(), &[])
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("instance `globex` (reserved until 2024-03-01T14:00:00Z by alice@lab-host (pid 4242))"), "{text}");
}

#[test]
fn claim_of_expired_reservation_whose_values_are_still_free_succeeds() {
    let lab = lab();
    let planned = lab.reserve("acme").allocation;
    lab.advance(TTL * 5);
    let e = lab.registry.claim("acme", &planned, "netns", lab_record(), &[]).unwrap();
    assert_eq!(e.allocation, planned);
}

#[test]
fn repeating_a_successful_claim_is_a_noop_success() {
    let lab = lab();
    let first = lab.create("acme");
    let before = lab.state();
    let again = lab
        .registry
        .claim("acme", &first.allocation, "netns", lab_record(), &[])
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(lab.state(), before, "a retried apply writes no second event");
}

#[test]
fn claim_of_name_allocated_with_other_values_is_refused() {
    let lab = lab();
    let acme = lab.create("acme");
    let mut other = acme.allocation;
    other.subnet = n("192.168.60.0/24");
    let before = lab.state();
    let err = lab
        .registry
        .claim("acme", &other, "netns", lab_record(), &[])
        .unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyAllocated { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("instance `acme` already exists"), "{text}");
    assert!(text.contains("subnet 192.168.56.0/24"), "{text}");
    assert!(text.contains("terraform import"), "{text}");
    // Another backend is another instance too.
    let err = lab
        .registry
        .claim("acme", &acme.allocation, "vagrant", lab_record(), &[])
        .unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyAllocated { .. }), "{err:?}");
    assert_eq!(lab.state(), before);
}

#[test]
fn claim_with_overlapping_own_values_is_refused() {
    let lab = lab();
    let bad = Allocation {
        subnet: n("192.168.56.0/24"),
        pod_cidr: n("10.96.0.0/16"),
        service_cidr: n("10.96.0.0/16"),
        mgmt_cidr: None,
    };
    let err = lab.registry.claim("acme", &bad, "netns", lab_record(), &[]).unwrap_err();
    assert!(err.to_string().contains("this instance's own pod_cidr"), "{err}");
    assert!(lab.store.events().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Release
// ---------------------------------------------------------------------------------------------

#[test]
fn release_frees_everything_the_name_holds() {
    let lab = lab();
    let acme = lab.create("acme");
    lab.create("globex");
    let released = lab.registry.release("acme").unwrap().expect("acme was there");
    assert_eq!(released, acme);
    assert_eq!(lab.registry.get("acme").unwrap(), None);
    assert_eq!(lab.actions().last().unwrap(), "instance.release acme");
    // Every network is free again: a pin on each of them succeeds.
    let wants = Wants::pinned(&acme.allocation);
    let Planned::Reserved(initech) = lab.registry.reserve("initech", &wants, "netns", &[]).unwrap() else {
        panic!("expected a reservation")
    };
    assert_eq!(initech.allocation, acme.allocation);
}

#[test]
fn release_of_a_reservation_frees_it() {
    let lab = lab();
    let acme = lab.reserve("acme");
    lab.registry.release("acme").unwrap().expect("acme was reserved");
    assert_eq!(lab.reserve("globex").allocation, acme.allocation);
    // A reservation is not remembered as released networks.
    assert!(lab.registry.snapshot().unwrap().released.is_empty());
}

#[test]
fn release_of_unknown_name_is_a_noop() {
    let lab = lab();
    lab.create("acme");
    let before = lab.state();
    assert_eq!(lab.registry.release("ghost").unwrap(), None);
    assert_eq!(lab.state(), before);
}

#[test]
fn recreated_name_gets_its_released_networks_back_when_free() {
    let lab = lab();
    lab.create("acme");
    let globex = lab.create("globex");
    lab.registry.release("acme").unwrap();
    lab.registry.release("globex").unwrap();
    // First-free would be acme's old 192.168.56.0/24; globex gets its own networks back.
    assert_eq!(lab.reserve("globex").allocation, globex.allocation);
    let preview = lab.registry.preview("acme", &Wants::auto(false), &[]).unwrap();
    assert_eq!(preview.allocation.subnet, n("192.168.56.0/24"));
}

#[test]
fn released_networks_taken_since_are_not_reused() {
    let lab = lab();
    let acme = lab.create("acme");
    lab.registry.release("acme").unwrap();
    let initech = lab.create("initech");
    assert_eq!(initech.allocation, acme.allocation, "first free again");
    let again = lab.create("acme");
    assert_eq!(again.allocation.subnet, n("192.168.57.0/24"));
    assert!(overlaps_among_holders(&lab.registry.snapshot().unwrap(), lab.registry.now()).is_empty());
    // Claiming removes the memory of released networks.
    assert!(!lab.registry.snapshot().unwrap().released.contains_key("acme"));
}

#[test]
fn released_memory_is_bounded_forgetting_the_oldest() {
    let lab = lab();
    let total = RELEASED_MEMORY + 6;
    for i in 0..total {
        lab.create(&format!("n{i:03}"));
        lab.registry.release(&format!("n{i:03}")).unwrap();
        lab.advance(Duration::from_secs(1));
    }
    let released = lab.registry.snapshot().unwrap().released;
    assert_eq!(released.len(), RELEASED_MEMORY);
    assert!(!released.contains_key("n000"));
    assert!(!released.contains_key("n005"));
    assert!(released.contains_key("n006"));
    assert!(released.contains_key(&format!("n{:03}", total - 1)));
}

#[test]
fn release_refused_while_federated() {
    let lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry
        .federate("globex", "acme", fed_record(), serde_json::json!({"reason": "api test"}))
        .unwrap();
    let before = lab.state();
    let err = lab.registry.release("acme").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Federated { .. }), "{err:?}");
    assert!(text.contains("instance `acme` is federated with globex"), "{text}");
    assert!(text.contains("destroy the federation acme+globex first"), "{text}");
    assert_eq!(lab.state(), before);
    lab.registry.unfederate("acme", "globex", serde_json::json!({})).unwrap();
    assert!(lab.registry.release("acme").unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// Dropping reservations
// ---------------------------------------------------------------------------------------------

#[test]
fn drop_named_reservation_records_one_event_and_leaves_allocations() {
    let lab = lab();
    lab.create("acme");
    lab.reserve("globex");
    lab.reserve("initech");
    let dropped = lab
        .registry
        .drop_reservations(&["globex".into(), "acme".into()], false)
        .unwrap();
    assert_eq!(dropped.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["globex"]);
    let doc = lab.registry.snapshot().unwrap();
    assert!(doc.instances.contains_key("acme"), "allocations are never dropped");
    assert!(doc.instances.contains_key("initech"));
    assert_eq!(lab.actions().last().unwrap(), "instance.reservation_drop globex");
}

#[test]
fn drop_expired_only_keeps_live_reservations() {
    let lab = lab();
    lab.reserve("acme");
    lab.advance(TTL * 2);
    lab.reserve("globex");
    let events_before = lab.store.events().unwrap().len();
    let dropped = lab.registry.drop_reservations(&[], true).unwrap();
    assert_eq!(dropped.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["acme"]);
    assert_eq!(lab.store.events().unwrap().len(), events_before + 1);
    assert!(lab.registry.get("globex").unwrap().is_some());
}

#[test]
fn drop_all_reservations_records_one_event_each() {
    let lab = lab();
    lab.reserve("acme");
    lab.reserve("globex");
    lab.create("initech");
    assert_eq!(lab.registry.reservations().unwrap().len(), 2);
    let dropped = lab.registry.drop_reservations(&[], false).unwrap();
    assert_eq!(dropped.len(), 2);
    let actions = lab.actions();
    assert_eq!(
        actions[actions.len() - 2..],
        ["instance.reservation_drop acme", "instance.reservation_drop globex"]
    );
    assert!(lab.registry.reservations().unwrap().is_empty());
    lab.registry.verify_events().unwrap();
}

#[test]
fn dropping_nothing_writes_nothing() {
    let lab = lab();
    lab.create("acme");
    let before = lab.state();
    assert!(lab.registry.drop_reservations(&[], false).unwrap().is_empty());
    assert!(lab.registry.drop_reservations(&["ghost".into()], false).unwrap().is_empty());
    assert_eq!(lab.state(), before);
}

// ---------------------------------------------------------------------------------------------
// Federation tags, lab updates, preview, usage
// ---------------------------------------------------------------------------------------------

#[test]
fn federation_tags_both_sides_and_is_recorded() {
    let lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry
        .federate("globex", "acme", fed_record(), serde_json::json!({"reason": "api test"}))
        .unwrap();
    let doc = lab.registry.snapshot().unwrap();
    assert_eq!(doc.instances["acme"].federated, ["globex"]);
    assert_eq!(doc.instances["globex"].federated, ["acme"]);
    let events = lab.store.events().unwrap();
    let last = events.last().unwrap();
    assert_eq!((last.action.as_str(), last.subject.as_str()), ("federation.create", "acme+globex"));
    assert_eq!(last.details["reason"], "api test");
    let err = lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyFederated { .. }), "{err:?}");
}

#[test]
fn federation_requires_both_instances_allocated() {
    let lab = lab();
    lab.create("acme");
    lab.reserve("globex");
    let before = lab.state();
    let err = lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap_err();
    assert!(matches!(err, RegistryError::NotAllocated { ref name } if name == "globex"), "{err:?}");
    let err = lab.registry.federate("acme", "ghost", fed_record(), serde_json::json!({})).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { ref name } if name == "ghost"), "{err:?}");
    assert_eq!(lab.state(), before);
}

#[test]
fn retag_restores_missing_tags_once_and_unfederate_removes_them() {
    let lab = lab();
    lab.create("acme");
    lab.create("globex");
    assert!(lab.registry.retag("acme", "globex").unwrap(), "tags were missing");
    assert!(!lab.registry.retag("globex", "acme").unwrap(), "nothing left to repair");
    lab.registry.unfederate("acme", "globex", serde_json::json!({"reason": "done"})).unwrap();
    let doc = lab.registry.snapshot().unwrap();
    assert!(doc.instances["acme"].federated.is_empty());
    assert!(doc.instances["globex"].federated.is_empty());
    let actions = lab.actions();
    assert_eq!(
        actions[actions.len() - 2..],
        ["federation.repair acme+globex", "federation.destroy acme+globex"]
    );
}

#[test]
fn update_lab_records_an_event_only_when_the_shape_changes() {
    let lab = lab();
    lab.create("acme");
    let mut shape = lab_record();
    assert_eq!(lab.registry.update_lab("acme", shape.clone()).unwrap().lab, Some(shape.clone()));
    assert_eq!(lab.store.events().unwrap().len(), 2);
    shape.workers = 3;
    lab.registry.update_lab("acme", shape.clone()).unwrap();
    assert_eq!(lab.actions().last().unwrap(), "instance.update acme");
    assert_eq!(lab.registry.get("acme").unwrap().unwrap().lab, Some(shape));
    lab.reserve("globex");
    assert!(matches!(
        lab.registry.update_lab("globex", lab_record()),
        Err(RegistryError::NotAllocated { .. })
    ));
}

#[test]
fn preview_is_read_only_and_shows_what_a_name_has_or_would_get() {
    let lab = lab();
    let free = lab.registry.preview("acme", &Wants::auto(false), &[]).unwrap();
    assert_eq!(free.status, "free");
    assert_eq!(free.entry, None);
    assert_eq!(free.allocation.subnet, n("192.168.56.0/24"));
    assert_eq!(lab.state(), (Document::default(), vec![]), "preview makes no reservation");
    let acme = lab.reserve("acme");
    let reserved = lab.registry.preview("acme", &Wants::auto(false), &[]).unwrap();
    assert_eq!((reserved.status, reserved.allocation), ("reserved", acme.allocation));
    lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    assert_eq!(lab.registry.preview("acme", &Wants::auto(false), &[]).unwrap().status, "allocated");
}

#[test]
fn preview_of_expired_reservation_shows_the_values_a_new_plan_would_keep() {
    let lab = lab();
    lab.reserve("globex");
    let acme = lab.reserve("acme");
    lab.registry.release("globex").unwrap();
    lab.advance(TTL * 2);
    let preview = lab.registry.preview("acme", &Wants::auto(false), &[]).unwrap();
    assert_eq!(preview.status, "free");
    assert_eq!(preview.allocation, acme.allocation);
    assert_eq!(lab.reserve("acme").allocation, preview.allocation);
}

#[test]
fn usage_counts_slots_held_by_allocations_and_live_reservations() {
    let lab = lab();
    lab.create("acme");
    lab.reserve("globex");
    lab.reserve("initech");
    lab.advance(TTL / 2);
    lab.registry.drop_reservations(&["initech".into()], false).unwrap();
    lab.reserve("hooli");
    lab.advance(TTL / 2);
    // acme allocated, hooli live, globex expired.
    let usage = lab.registry.usage(&lab.registry.snapshot().unwrap());
    let host = usage.iter().find(|u| u.kind == Kind::Subnet).unwrap();
    assert_eq!((host.capacity, host.used, host.free), (8, 2, 6));
    let pod = usage.iter().find(|u| u.kind == Kind::PodCidr).unwrap();
    assert_eq!((pod.capacity, pod.used, pod.free), (16, 2, 14));
    let mgmt = usage.iter().find(|u| u.kind == Kind::MgmtCidr).unwrap();
    assert_eq!(mgmt.used, 0);
}

#[test]
fn usage_counts_networks_of_any_kind_inside_a_pool() {
    let lab = lab();
    // A pod CIDR pinned in the service pool uses a service slot, and the other way round.
    let wants = Wants {
        subnet: Want::Auto,
        pod_cidr: Want::Pinned(n("10.96.0.0/16")),
        service_cidr: Want::Pinned(n("10.250.0.0/16")),
        mgmt_cidr: None,
    };
    lab.registry.reserve("acme", &wants, "netns", &[]).unwrap();
    let usage = lab.registry.usage(&lab.registry.snapshot().unwrap());
    let get = |k: Kind| usage.iter().find(|u| u.kind == k).unwrap().used;
    assert_eq!((get(Kind::Subnet), get(Kind::PodCidr), get(Kind::ServiceCidr)), (1, 1, 1));
}

#[test]
fn usage_of_a_large_pool_is_exact() {
    // 2^20 /30 slots in a /10: used must not be capped by the number of slots scanned.
    let raw = RawSettings {
        pod_pool: Some("100.64.0.0/10".into()),
        pod_prefix: Some(30),
        ..Default::default()
    };
    let pools = validate(&raw).unwrap().pools;
    let lab = lab_with(pools);
    let wants = Wants {
        pod_cidr: Want::Pinned(n("100.127.255.252/30")),
        ..Wants::auto(false)
    };
    lab.registry.reserve("acme", &wants, "netns", &[]).unwrap();
    let usage = lab.registry.usage(&lab.registry.snapshot().unwrap());
    let pod = usage.iter().find(|u| u.kind == Kind::PodCidr).unwrap();
    assert_eq!(pod.capacity, 1 << 20);
    assert_eq!((pod.used, pod.free), (1, (1 << 20) - 1));
}

// ---------------------------------------------------------------------------------------------
// Refused requests and names
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_request_writes_nothing() {
    let lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap();
    for i in 0..6 {
        lab.create(&format!("lab{i}"));
    }
    let before = lab.state();
    let acme = before.0.instances["acme"].allocation;
    let refusals: Vec<(&str, RegistryError)> = vec![
        ("bad name", lab.registry.reserve("ACME", &Wants::auto(false), "netns", &[]).unwrap_err()),
        ("pool exhausted", lab.registry.reserve("ninth", &Wants::auto(false), "netns", &[]).unwrap_err()),
        (
            "pinned conflict",
            lab.registry.reserve("ninth", &Wants::pinned(&acme), "netns", &[]).unwrap_err(),
        ),
        ("claim conflict", lab.registry.claim("ninth", &acme, "netns", lab_record(), &[]).unwrap_err()),
        (
            "claim of allocated name",
            lab.registry
                .claim("acme", &before.0.instances["globex"].allocation, "netns", lab_record(), &[])
                .unwrap_err(),
        ),
        ("release while federated", lab.registry.release("globex").unwrap_err()),
        ("federate unknown", lab.registry.federate("acme", "ghost", fed_record(), serde_json::json!({})).unwrap_err()),
        ("update unknown", lab.registry.update_lab("ghost", lab_record()).unwrap_err()),
    ];
    for (what, err) in &refusals {
        assert!(!err.to_string().is_empty(), "{what}");
    }
    assert_eq!(lab.state(), before, "a refused request changed the registry or the log");
}

fn assert_name_refused(name: &str) {
    let err = validate_name(name).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::InvalidName { .. }), "{name:?}: {err:?}");
    assert!(text.contains(&format!("{name:?}")), "the message names the name: {text}");
    assert!(text.contains(NAME_RULE), "the message states the rule: {text}");
    assert!(text.contains("1 to 32 characters"), "{text}");
    // Every operation that takes a new name refuses it before touching the store.
    let lab = lab();
    let wants = Wants::auto(false);
    assert!(matches!(lab.registry.reserve(name, &wants, "netns", &[]), Err(RegistryError::InvalidName { .. })));
    assert!(matches!(lab.registry.preview(name, &wants, &[]), Err(RegistryError::InvalidName { .. })));
    let a = lab.registry.preview("acme", &wants, &[]).unwrap().allocation;
    assert!(matches!(
        lab.registry.claim(name, &a, "netns", lab_record(), &[]),
        Err(RegistryError::InvalidName { .. })
    ));
    assert_eq!(lab.state(), (Document::default(), vec![]));
}

macro_rules! refused_names {
    ($($test:ident: $name:expr;)*) => {$(
        #[test]
        fn $test() {
            assert_name_refused(&$name);
        }
    )*};
}

refused_names! {
    name_with_path_traversal_is_refused: "../x";
    name_in_upper_case_is_refused: "ACME";
    name_with_underscore_is_refused: "a_b";
    name_with_space_is_refused: "a b";
    empty_name_is_refused: "";
    name_of_33_characters_is_refused: "a".repeat(33);
    name_ending_with_hyphen_is_refused: "a-";
    name_starting_with_digit_is_refused: "1abc";
    name_starting_with_hyphen_is_refused: "-abc";
    name_with_non_ascii_letter_is_refused: "acmé";
    name_with_dot_is_refused: "acme.lab";
}

#[test]
fn name_of_32_characters_is_accepted() {
    let name = format!("a{}", "b1-c".repeat(7)) + "xyz";
    assert_eq!(name.len(), 32);
    validate_name(&name).unwrap();
    let lab = lab();
    assert_eq!(lab.reserve(&name).name, name);
}

#[test]
fn short_and_hyphenated_names_are_accepted() {
    for name in ["a", "acme", "acme-dev", "a1", "x-1-y"] {
        validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn memory_store_event_chain_verifies_and_matches_the_document() {
    let lab = lab();
    lab.create("acme");
    lab.reserve("globex");
    lab.registry.release("acme").unwrap();
    let v = lab.registry.verify_events().unwrap();
    assert_eq!(v.events, 4);
    let doc = lab.registry.snapshot().unwrap();
    assert_eq!(journal_head(&doc), Some(v.head));
    assert_eq!(doc.journal.events.len(), 1, "the journal holds the newest change's events");
    assert_eq!(doc.journal.events[0].action, "instance.release");
}
