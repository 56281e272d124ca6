//! Who may take what: the name of another workspace's live reservation is refused; a newer
//! plan of a workspace takes over what its older plans reserved when it needs the room; a
//! pinned request takes over networks that another reservation had chosen automatically (and,
//! when that reservation was made in the same run, fails once so the next plan converges); a
//! failed plan drops what it reserved except pins; a claim never adopts an instance another
//! run created. Run on each store (see the suites in `tests/mod.rs`).

use super::*;

fn pin_pod(cidr: &str) -> Wants {
    Wants {
        pod_cidr: Want::Pinned(n(cidr)),
        ..Wants::auto(false)
    }
}

fn pin_subnet(cidr: &str) -> Wants {
    Wants {
        subnet: Want::Pinned(n(cidr)),
        ..Wants::auto(false)
    }
}

fn reserved(p: Planned) -> Entry {
    match p {
        Planned::Reserved(e) => e,
        other => panic!("not a reservation: {other:?}"),
    }
}

#[test]
fn name_reserved_by_another_workspace_is_refused_until_its_reservation_expires() {
    let lab = lab();
    let theirs = lab.other_workspace();
    reserved(theirs.reserve("acme", &Wants::auto(false), "netns", &[]).unwrap());
    let before = lab.state();
    let err = lab.registry.reserve("acme", &Wants::auto(false), "netns", &[]).unwrap_err();
    assert!(matches!(err, RegistryError::ReservedElsewhere { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("/home/bob/other-lab") && text.contains("reserved by a plan of workspace `default`"), "{text}");
    assert_eq!(lab.state(), before, "a refused plan writes nothing");
    // Its apply would be refused too.
    let err = lab.registry.claim("acme", &lab.registry.get("acme").unwrap().unwrap().allocation, "netns", lab_record(), &[]).unwrap_err();
    assert!(matches!(err, RegistryError::ReservedElsewhere { .. }), "{err:?}");
    // Expired, the name is free for anyone; the other workspace's values are not preferred.
    lab.advance(TTL);
    let mine = reserved(lab.registry.reserve("acme", &Wants::auto(false), "netns", &[]).unwrap());
    assert_eq!(mine.owner.as_ref(), Some(&lab.registry.origin().workspace));
}

#[test]
fn other_configurations_get_other_values_and_never_take_each_others_reservations() {
    let lab = lab();
    let theirs = lab.other_workspace();
    let a = reserved(lab.registry.reserve("acme", &Wants::auto(false), "netns", &[]).unwrap());
    let b = reserved(theirs.reserve("globex", &Wants::auto(false), "netns", &[]).unwrap());
    assert_ne!(a.allocation.subnet, b.allocation.subnet);
    // A full pool stays full for the other workspace: it may not take what this one planned.
    let small = lab_with({
        let raw = RawSettings { host_pool: Some("192.168.56.0/23".into()), ..Default::default() };
        validate(&raw).unwrap().pools
    });
    small.reserve("acme");
    small.reserve("globex");
    let err = small.other_workspace().reserve("initech", &Wants::auto(false), "netns", &[]).unwrap_err();
    assert!(matches!(err, RegistryError::Alloc { source: AllocError::Exhausted { .. }, .. }), "{err:?}");
}

#[test]
fn a_newer_plan_of_the_workspace_takes_over_its_older_reservations_when_it_needs_the_room() {
    // count = 16 on 8 subnets, never applied, then count = 8 with other names in a new run.
    let mut lab = lab();
    for i in 8..16 {
        lab.reserve(&format!("k{i}"));
    }
    assert!(lab.registry.reserve("k16", &Wants::auto(false), "netns", &[]).is_err());
    lab.new_run(1);
    for i in 0..8 {
        let e = reserved(lab.registry.reserve(&format!("k{i}"), &Wants::auto(false), "netns", &[]).unwrap());
        assert_eq!(e.run.as_deref(), Some(lab.registry.origin().run.as_str()));
    }
    let doc = lab.registry.snapshot().unwrap();
    let now = lab.registry.now();
    let holders: Vec<&String> = doc.instances.values().filter(|e| e.holds(now)).map(|e| &e.name).collect();
    assert_eq!(holders, vec!["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"]);
    // The older plan's entries stay, holding nothing, so that its saved plan fails naming the
    // taker.
    assert!(doc.instances["k8"].describe_status(now).starts_with("reservation taken over by `k"), "{:?}", doc.instances["k8"]);
    assert!(overlaps_among_holders(&doc, now).is_empty());
    let taken = lab.actions().iter().filter(|a| a.starts_with("instance.reservation_taken")).count();
    assert_eq!(taken, 8, "{:?}", lab.actions());
    // Within one run, nothing of its own is taken over: the ninth name still fails.
    assert!(matches!(
        lab.registry.reserve("k8", &Wants::auto(false), "netns", &[]).unwrap_err(),
        RegistryError::Alloc { source: AllocError::Exhausted { .. }, .. }
    ));
}

#[test]
fn a_pinned_request_takes_over_what_an_older_plan_chose_automatically() {
    let mut lab = lab();
    let acme = lab.reserve("acme");
    assert_eq!(acme.allocation.service_cidr, n("10.96.0.0/16"));
    lab.new_run(1);
    let theirs = lab.other_workspace();
    // Even another workspace's pin wins over an automatic value: the automatic one can go
    // anywhere, the pinned one cannot. A saved plan of acme would fail naming globex.
    let g = reserved(theirs.reserve("globex", &pin_pod("10.96.0.0/16"), "netns", &[]).unwrap());
    assert_eq!(g.allocation.pod_cidr, n("10.96.0.0/16"));
    let tomb = lab.registry.get("acme").unwrap().unwrap();
    assert!(!tomb.holds(lab.registry.now()));
    assert!(lab.actions().contains(&"instance.reservation_taken acme".to_string()), "{:?}", lab.actions());
    // acme's saved plan: the apply refuses its values, naming the taker ...
    let err = lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap_err();
    assert!(err.to_string().contains("globex"), "{err}");
    // ... and so does its re-plan at apply (Terraform plans again before it applies), once.
    let err = lab.registry.reserve("acme", &Wants::auto(false), "netns", &[]).unwrap_err();
    assert!(matches!(err, RegistryError::ReservationTaken { .. }), "{err:?}");
    assert!(err.to_string().contains("taken over by instance `globex`") && err.to_string().contains("pinned value"), "{err}");
    // acme's next plan gets free values (globex's own service CIDR took 10.97.0.0/16).
    let again = lab.reserve("acme");
    assert_eq!(again.allocation.service_cidr, n("10.98.0.0/16"));
    assert!(overlaps_among_holders(&lab.registry.snapshot().unwrap(), lab.registry.now()).is_empty());
}

#[test]
fn pins_never_take_over_pinned_reservations_or_allocations() {
    let lab = lab();
    lab.registry.reserve("acme", &pin_subnet("192.168.60.0/24"), "netns", &[]).unwrap();
    let err = lab.other_workspace().reserve("globex", &pin_subnet("192.168.60.0/24"), "netns", &[]).unwrap_err();
    assert!(matches!(err, RegistryError::Alloc { source: AllocError::Conflict { .. }, .. }), "{err:?}");
    lab.create("initech");
    let service = lab.registry.get("initech").unwrap().unwrap().allocation.service_cidr;
    let err = lab.other_workspace().reserve("hooli", &Wants { pod_cidr: Want::Pinned(service), ..Wants::auto(false) }, "netns", &[]).unwrap_err();
    assert!(err.to_string().contains("initech") && err.to_string().contains("allocated"), "{err}");
}

#[test]
fn a_pin_taking_what_its_own_plan_gave_another_instance_fails_once_then_the_next_plan_converges() {
    // Terraform planned the automatic instance first, in this same run: its plan already shows
    // 10.96.0.0/16 as its service CIDR.
    let lab = lab();
    let auto = lab.reserve("acme");
    assert_eq!(auto.allocation.service_cidr, n("10.96.0.0/16"));
    let err = lab.registry.reserve("globex", &pin_pod("10.96.0.0/16"), "netns", &[]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::TakenInThisRun { .. }), "{err:?}");
    assert!(text.contains("acme") && text.contains("run `terraform plan`"), "{text}");
    // The plan failed: what it reserved automatically goes, the pin stays.
    lab.registry.drop_run_reservations().unwrap();
    let doc = lab.registry.snapshot().unwrap();
    assert_eq!(doc.instances.keys().collect::<Vec<_>>(), vec!["globex"]);
    // The next plan, in either order, gives both their values.
    for order in [["acme", "globex"], ["globex", "acme"]] {
        let mut lab2 = Lab::on(lab.store.clone(), default_pools());
        lab2.new_run(if order[0] == "acme" { 7 } else { 8 });
        for name in order {
            let wants = if name == "globex" { pin_pod("10.96.0.0/16") } else { Wants::auto(false) };
            let e = reserved(lab2.registry.reserve(name, &wants, "netns", &[]).unwrap());
            if name == "acme" {
                assert_ne!(e.allocation.service_cidr, n("10.96.0.0/16"));
            }
        }
        assert!(overlaps_among_holders(&lab2.registry.snapshot().unwrap(), lab2.registry.now()).is_empty());
    }
}

#[test]
fn a_failed_plan_drops_the_reservations_it_made_and_keeps_pins_and_renewals() {
    let mut lab = lab();
    lab.reserve("kept");
    lab.new_run(1);
    lab.reserve("kept"); // renewed by run 1, made by run 0
    lab.reserve("fresh");
    lab.registry.reserve("pinned", &pin_subnet("192.168.60.0/24"), "netns", &[]).unwrap();
    lab.create("built");
    let mut dropped = lab.registry.drop_run_reservations().unwrap();
    dropped.sort();
    assert_eq!(dropped, vec!["fresh"]);
    let doc = lab.registry.snapshot().unwrap();
    assert_eq!(doc.instances.keys().collect::<Vec<_>>(), vec!["built", "kept", "pinned"]);
    assert_eq!(lab.actions().last().unwrap(), "instance.reservation_drop fresh");
}

#[test]
fn a_claim_never_adopts_an_instance_a_state_holds() {
    let mut lab = lab();
    let acme = lab.create("acme");
    // The same run repeating its claim gets it (a retried call) ...
    lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    // ... and once a later run saw it in state (a refresh confirms it), no other run does (a
    // second resource with the same name, applied with -target).
    lab.new_run(1);
    lab.registry.confirm("acme").unwrap();
    assert!(lab.registry.get("acme").unwrap().unwrap().creating.is_none());
    lab.new_run(2);
    let err = lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyAllocated { .. }), "{err:?}");
    assert!(err.to_string().contains("/home/alice/lab"), "{err}");
}

#[test]
fn an_interrupted_creation_is_adopted_by_the_next_run_of_its_workspace_only() {
    let mut lab = lab();
    let acme = lab.create("acme");
    // The apply was killed: no refresh ever saw it. Another workspace cannot take it ...
    let err = lab.other_workspace().claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyAllocated { .. }), "{err:?}");
    // ... its own next run does, with an event, and is then the run creating it.
    lab.new_run(1);
    assert_eq!(lab.registry.interrupted().unwrap().len(), 1);
    let e = lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    assert_eq!(e.creating.as_ref().unwrap().run, lab.registry.origin().run);
    assert_eq!(lab.actions().last().unwrap(), "instance.adopt acme");
    assert!(lab.registry.interrupted().unwrap().is_empty());
    // Other values are another instance: refused.
    lab.new_run(2);
    let mut other = acme.allocation;
    other.subnet = n("192.168.60.0/24");
    assert!(lab.registry.claim("acme", &other, "netns", lab_record(), &[]).is_err());
    // A destroy of the workspace removing it, killed: the next create adopts it again and
    // repairs what the removal left (a live removal is refused: see the next test).
    assert!(lab.registry.begin_removal("acme").unwrap());
    assert!(lab.registry.being_removed_by_this_run("acme").unwrap());
    lab.new_run(3);
    let e = lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    assert!(!e.creating.as_ref().unwrap().removing, "{e:?}");
    assert_eq!(lab.actions().last().unwrap(), "instance.adopt acme");
}

#[test]
fn a_creation_whose_process_still_runs_is_neither_adopted_nor_removed() {
    let mut lab = lab();
    // Run 1 is this very test process: it still runs.
    lab.new_run_in(1, super::super::owner::this_process());
    let acme = lab.create("acme");
    let c = acme.creating.clone().unwrap();
    assert_eq!((c.running(), c.word(), c.pid()), (Some(true), "creating", Some(std::process::id())));
    lab.new_run_in(2, None);
    let err = lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap_err();
    assert!(matches!(&err, RegistryError::StillCreating { pid, .. } if *pid == std::process::id()), "{err:?}");
    let err = lab.registry.begin_removal("acme").unwrap_err();
    assert!(matches!(err, RegistryError::StillCreating { .. }), "{err:?}");
    // The same pid with another start time is another (earlier) process: gone, so adopted.
    let recorded = c.process.clone().unwrap();
    let (head, _) = recorded.rsplit_once('/').unwrap();
    let dead = format!("{head}/1");
    lab.registry
        .commit(|doc, _| {
            doc.instances.get_mut("acme").unwrap().creating.as_mut().unwrap().process = Some(dead.clone());
            Ok(((), vec![Draft::new("test.process_gone", "acme", serde_json::json!({}))]))
        })
        .unwrap();
    let gone = lab.registry.get("acme").unwrap().unwrap().creating.unwrap();
    assert_eq!((gone.running(), gone.word()), (Some(false), "interrupted"));
    lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    assert_eq!(lab.actions().last().unwrap(), "instance.adopt acme");
    // Another boot (or host): cannot be known, reads as creating, and is adoptable.
    let other_boot = Creating { process: Some(format!("not-this-boot/{}/1", std::process::id())), ..gone.clone() };
    assert_eq!((other_boot.running(), other_boot.word()), (None, "creating"));
}

#[test]
fn an_answered_creation_stays_adoptable_until_terraform_surely_has_the_answer() {
    let mut lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry.finish("acme").unwrap();
    lab.registry.finish("acme").unwrap(); // a retried call answers once
    let c = lab.registry.get("acme").unwrap().unwrap().creating.unwrap();
    assert!(c.answered.is_some() && !c.removing, "{c:?}");
    assert_eq!(lab.actions().iter().filter(|a| *a == "instance.created acme").count(), 1);
    // Killed right after answering: the answer may never have reached a state. The next
    // create of the name adopts it (had a state held it, its refresh would have confirmed it
    // and no create would run) ...
    let killed = lab.registry.origin().run.clone();
    lab.new_run_in(1, None);
    assert!(lab.registry.begin_removal("globex").unwrap(), "... a destroy removes it, as one never answered");
    let acme = lab.registry.get("acme").unwrap().unwrap();
    lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    assert_eq!(lab.actions().last().unwrap(), "instance.adopt acme");
    let c = lab.registry.get("acme").unwrap().unwrap().creating.unwrap();
    assert_ne!(c.run, killed);
    assert!(c.answered.is_none(), "adopted: this run answers anew");
    // A run that ends cleanly has delivered its answers: they are created, nobody adopts them.
    lab.registry.finish("acme").unwrap();
    assert_eq!(lab.registry.delivered().unwrap(), vec!["acme".to_string()]);
    assert!(lab.registry.get("acme").unwrap().unwrap().creating.is_none());
    assert_eq!(*lab.actions().last().unwrap(), format!("run.delivered {}", lab.registry.origin().run));
    assert_eq!(lab.registry.delivered().unwrap(), Vec::<String>::new(), "nothing twice");
    lab.new_run_in(2, None);
    let err = lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyAllocated { .. }), "{err:?}");
}

#[test]
fn a_destroy_drops_the_reservations_of_its_workspace_that_it_did_not_use() {
    let lab = lab();
    lab.create("kept");
    lab.reserve("planned");
    lab.reserve("used");
    let theirs = lab.other_workspace();
    theirs.reserve("theirs", &Wants::auto(false), "netns", &[]).unwrap();
    let dropped = lab.registry.drop_unused_reservations(&|n: &str| n == "used").unwrap();
    assert_eq!(dropped, vec!["planned".to_string()]);
    let doc = lab.registry.snapshot().unwrap();
    assert_eq!(doc.instances.keys().collect::<Vec<_>>(), vec!["kept", "theirs", "used"]);
    assert_eq!(lab.actions().last().unwrap(), "instance.reservation_drop planned");
}

#[test]
fn import_adopts_the_instance_into_the_importing_workspace_with_an_event() {
    let lab = lab();
    lab.create("acme");
    let theirs = lab.other_workspace();
    let e = theirs.adopt("acme").unwrap().unwrap();
    assert_eq!(e.owner.as_ref(), Some(&theirs.origin().workspace));
    assert_eq!(lab.actions().last().unwrap(), "instance.import acme");
    // Adopting again changes nothing.
    let before = lab.state();
    theirs.adopt("acme").unwrap();
    assert_eq!(lab.state(), before);
    assert!(theirs.adopt("ghost").unwrap().is_none());
}

#[test]
fn federation_declarations_are_kept_while_the_federation_lives() {
    let lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry.federate("globex", "acme", fed_record(), serde_json::json!({})).unwrap();
    let r = lab.registry.snapshot().unwrap().federations["acme+globex"].clone();
    assert_eq!((&r.reason, &r.namespaces, r.created_at), (&fed_record().reason, &fed_record().namespaces, T0));
    assert_eq!(r.owner.as_ref(), Some(&lab.registry.origin().workspace));
    assert!(r.creating.is_some(), "a new federation is creating until a refresh sees it");
    lab.registry
        .update_federation("acme", "globex", Some("INC-2".into()), vec!["apps".into()], serde_json::json!({}))
        .unwrap();
    let r = &lab.registry.snapshot().unwrap().federations["acme+globex"];
    assert_eq!((r.reason.as_deref(), r.namespaces.clone(), r.created_at), (Some("INC-2"), vec!["apps".to_string()], T0));
    lab.registry.unfederate("acme", "globex", serde_json::json!({})).unwrap();
    assert!(lab.registry.snapshot().unwrap().federations.is_empty());
}

#[test]
fn an_interrupted_federation_is_adopted_by_the_next_run_of_its_workspace_only() {
    let mut lab = lab();
    lab.create("acme");
    lab.create("globex");
    lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap();
    // Killed before the state recorded it: another workspace's create is refused ...
    let err = lab.other_workspace().federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyFederated { .. }), "{err:?}");
    // ... this workspace's next run adopts it.
    lab.new_run(1);
    assert_eq!(lab.registry.interrupted_federations().unwrap().len(), 1);
    lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap();
    assert_eq!(lab.actions().last().unwrap(), "federation.adopt acme+globex");
    // Once a later refresh saw it, a second create is refused as ever.
    lab.new_run(2);
    lab.registry.confirm_federation("acme+globex").unwrap();
    assert!(lab.registry.interrupted_federations().unwrap().is_empty());
    lab.new_run(3);
    let err = lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyFederated { .. }), "{err:?}");
}
