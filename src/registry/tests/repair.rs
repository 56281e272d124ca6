//! Generations, `registry check` and `registry repair` on the file store: each way a registry
//! file or its event log can be damaged is reported with its way back and repaired, after which
//! a normal commit succeeds and the event chain verifies.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;
use crate::registry::file::FileStore;
use crate::registry::generations;
use crate::registry::repair::{self, Base, Problem};

fn file_lab(home: &Path) -> Lab {
    Lab::on(Arc::new(FileStore::new(home)), default_pools())
}

fn store(home: &Path) -> FileStore {
    FileStore::new(home)
}

/// A home with acme and globex federated and initech created then released (8 changes).
fn populated() -> (tempfile::TempDir, Lab) {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    lab.create("globex");
    lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({"why": "test"})).unwrap();
    lab.create("initech");
    lab.registry.release("initech").unwrap();
    (home, lab)
}

fn doc_path(home: &Path) -> std::path::PathBuf {
    home.join("instances.json")
}

fn edit(home: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut raw: serde_json::Value = serde_json::from_slice(&fs::read(doc_path(home)).unwrap()).unwrap();
    f(&mut raw);
    fs::write(doc_path(home), serde_json::to_vec_pretty(&raw).unwrap()).unwrap();
}

fn problems(home: &Path) -> Vec<Problem> {
    repair::diagnose(&store(home)).unwrap().problems
}

/// Repair, then: check is clean, the chain verifies, a normal commit succeeds and verifies.
fn repair_and_prove(home: &Path) -> repair::Repaired {
    let r = repair::repair(&store(home), T0 + TTL, &actor(), &Client::provider("cli")).unwrap();
    assert!(r.plan.is_some(), "nothing was repaired");
    let d = repair::diagnose(&store(home)).unwrap();
    assert!(d.problems.is_empty(), "still broken after repair: {:?}", d.problems);
    let lab = file_lab(home);
    lab.registry.verify_events().unwrap();
    lab.create("hooli");
    let v = lab.registry.verify_events().unwrap();
    let events = lab.store.events().unwrap();
    assert_eq!(v.events, events.len() as u64);
    assert!(events.iter().any(|e| e.action == "registry.repair"), "no repair event");
    assert!(repair::diagnose(&store(home)).unwrap().problems.is_empty());
    r
}

fn names(lab_home: &Path) -> Vec<String> {
    file_lab(lab_home).registry.snapshot().unwrap().instances.keys().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Generations
// ---------------------------------------------------------------------------------------------

#[test]
fn every_commit_links_a_generation_and_the_newest_eight_are_kept() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let seqs: Vec<u64> = generations::list(home.path()).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, [2, 1]);
    for i in 0..5 {
        lab.create(&format!("lab{i}"));
    }
    let seqs: Vec<u64> = generations::list(home.path()).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, (5..=12).rev().collect::<Vec<u64>>(), "bounded to the newest {}", generations::KEEP);
    // The newest holds the document's bytes, in a file of its own: a write into the
    // document's inode (`cp`, `echo >`, an editor) cannot reach it.
    let doc = fs::metadata(doc_path(home.path())).unwrap();
    let newest = fs::metadata(generations::path(home.path(), 12)).unwrap();
    assert_ne!((doc.dev(), doc.ino()), (newest.dev(), newest.ino()));
    assert_eq!(fs::read(doc_path(home.path())).unwrap(), fs::read(generations::path(home.path(), 12)).unwrap());
    // An older one holds exactly the document of its change.
    let g = generations::read(11, &generations::path(home.path(), 11)).unwrap();
    assert_eq!(g.doc.unwrap().journal.seq, 11);
    assert!(problems(home.path()).is_empty());
}

#[test]
fn generation_left_by_a_writer_killed_before_its_rename_is_ignored_then_replaced() {
    let (home, lab) = populated();
    let seq = lab.registry.snapshot().unwrap().journal.seq;
    fs::write(generations::path(home.path(), seq + 1), b"{\"version\": 1, \"instances\": {\"ghost\":").unwrap();
    assert_eq!(names(home.path()), ["acme", "globex"]);
    let d = repair::diagnose(&store(home.path())).unwrap();
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert!(d.notes.iter().any(|n| n.contains("never became the registry")), "{:?}", d.notes);
    lab.reserve("hooli");
    let g = generations::read(seq + 1, &generations::path(home.path(), seq + 1)).unwrap();
    assert!(g.doc.unwrap().instances.contains_key("hooli"));
}

// ---------------------------------------------------------------------------------------------
// Damage, reported and repaired
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_document_is_reported_and_rebuilt_from_the_newest_generation() {
    let (home, lab) = populated();
    let before = lab.registry.snapshot().unwrap();
    fs::write(doc_path(home.path()), b"\x00\x13garbage").unwrap();
    let err = lab.registry.snapshot().unwrap_err().to_string();
    assert!(err.contains("registry repair --home"), "{err}");
    assert!(matches!(problems(home.path())[..], [Problem::Unparseable { .. }]));
    let r = repair_and_prove(home.path());
    assert!(matches!(r.plan.as_ref().unwrap().base, Base::Generation { seq: 8, .. }));
    let after = file_lab(home.path()).registry.snapshot().unwrap();
    assert_eq!(after.instances["acme"], before.instances["acme"]);
    assert_eq!(after.federations, before.federations);
    assert_eq!(fs::read(r.damaged_copy.unwrap()).unwrap(), b"\x00\x13garbage");
}

#[test]
fn truncated_document_is_reported_and_rebuilt() {
    let (home, lab) = populated();
    let bytes = fs::read(doc_path(home.path())).unwrap();
    fs::write(doc_path(home.path()), &bytes[..bytes.len() / 2]).unwrap();
    assert!(lab.registry.reserve("x", &Wants::auto(false), "netns", &[]).is_err());
    assert!(matches!(&problems(home.path())[..], [Problem::Unparseable { why }] if why.contains("EOF")));
    repair_and_prove(home.path());
    assert_eq!(names(home.path()), ["acme", "globex", "hooli"]);
}

#[test]
fn entry_removed_by_hand_stops_plans_and_is_brought_back() {
    let (home, lab) = populated();
    edit(home.path(), |raw| {
        raw["instances"].as_object_mut().unwrap().remove("globex");
    });
    let err = lab.registry.get("acme").unwrap_err();
    assert!(matches!(err, RegistryError::EditedByHand { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("it lacks globex") && msg.contains("registry repair"), "{msg}");
    match &problems(home.path())[..] {
        [Problem::EditedByHand { diff, .. }] => {
            assert_eq!(diff.removed, ["globex"]);
            assert!(diff.added.is_empty() && diff.changed.is_empty(), "{diff:?}");
        }
        other => panic!("{other:?}"),
    }
    let r = repair_and_prove(home.path());
    assert_eq!(r.plan.as_ref().unwrap().restored, ["globex"]);
    assert_eq!(names(home.path()), ["acme", "globex", "hooli"]);
    assert_eq!(file_lab(home.path()).registry.get("acme").unwrap().unwrap().federated, ["globex"]);
}

#[test]
fn entry_added_by_hand_is_reported_and_kept() {
    let (home, lab) = populated();
    edit(home.path(), |raw| {
        let mut e = raw["instances"]["acme"].clone();
        e["name"] = "stray".into();
        e["subnet"] = "192.168.63.0/24".into();
        e["pod_cidr"] = "10.250.0.0/16".into();
        e["service_cidr"] = "10.110.0.0/16".into();
        e["federated"] = serde_json::json!(["acme"]);
        raw["instances"]["stray"] = e;
    });
    // Nothing is lost: reads go on (each operation checks what it uses).
    assert_eq!(names(home.path()), ["acme", "globex", "stray"]);
    drop(lab);
    match &problems(home.path())[..] {
        [Problem::EditedByHand { diff, .. }] => assert_eq!(diff.added, ["stray"]),
        other => panic!("{other:?}"),
    }
    let r = repair_and_prove(home.path());
    let plan = r.plan.as_ref().unwrap();
    assert_eq!(plan.kept, ["stray"]);
    assert!(r.next_steps().iter().any(|s| s.contains("kept stray") && s.contains("terraform import")), "{:?}", r.next_steps());
    let doc = file_lab(home.path()).registry.snapshot().unwrap();
    assert!(doc.instances.contains_key("stray"));
    assert_eq!(doc.instances["stray"].federated, ["acme"]);
}

#[test]
fn older_generation_copied_over_is_superseded_by_the_newest_consistent_one() {
    let (home, lab) = populated();
    // Seq 4: acme and globex created, no federation, no initech yet (`cp` writes into the
    // existing file).
    fs::copy(generations::path(home.path(), 4), doc_path(home.path())).unwrap();
    let err = lab.registry.snapshot().unwrap_err().to_string();
    assert!(err.contains("older copy of instances.json was restored") && err.contains("registry repair"), "{err}");
    assert!(lab.registry.reserve("x", &Wants::auto(false), "netns", &[]).is_err());
    assert!(matches!(problems(home.path())[..], [Problem::OlderThanLog { doc_seq: 4, log_seq: 8 }]));
    let r = repair_and_prove(home.path());
    assert!(matches!(r.plan.as_ref().unwrap().base, Base::Generation { seq: 8, .. }));
    let doc = file_lab(home.path()).registry.snapshot().unwrap();
    assert!(doc.federations.contains_key("acme+globex"));
    assert!(doc.released.contains_key("initech"));
}

#[test]
fn older_copy_without_a_matching_generation_is_accepted_and_later_changes_listed() {
    let (home, lab) = populated();
    fs::copy(generations::path(home.path(), 2), doc_path(home.path())).unwrap();
    fs::remove_dir_all(generations::dir(home.path())).unwrap();
    drop(lab);
    assert!(matches!(problems(home.path())[..], [Problem::OlderThanLog { doc_seq: 2, log_seq: 8 }]));
    let r = repair_and_prove(home.path());
    let plan = r.plan.as_ref().unwrap();
    assert_eq!(plan.base, Base::Document { seq: 2 });
    assert_eq!(plan.changed_since, ["globex", "acme+globex", "initech"]);
    assert!(r.next_steps().iter().any(|s| s.contains("terraform apply -refresh-only") && s.contains("globex")));
}

#[test]
fn deleted_event_log_starts_a_new_chain_recording_the_old_head() {
    let (home, lab) = populated();
    let before = lab.registry.snapshot().unwrap();
    fs::remove_file(home.path().join("events.jsonl")).unwrap();
    let err = lab.registry.snapshot().unwrap_err().to_string();
    assert!(err.contains("the log is empty or missing") && err.contains("registry repair"), "{err}");
    assert!(matches!(problems(home.path())[..], [Problem::LogMissing { doc_seq: 8 }]));
    let r = repair_and_prove(home.path());
    let ev = r.event.as_ref().unwrap();
    assert_eq!((ev.seq, ev.prev.as_str()), (1, crate::audit::GENESIS));
    assert_eq!(ev.details["unverified_old_head"]["seq"], 8);
    assert_eq!(ev.details["unverified_old_head"]["hash"], before.journal.hash);
    assert!(r.old_generations.is_some());
    let after = file_lab(home.path()).registry.snapshot().unwrap();
    assert_eq!(after.instances["acme"], before.instances["acme"]);
    assert_eq!(after.federations, before.federations);
}

#[test]
fn broken_event_log_is_set_aside_and_a_new_chain_started() {
    let (home, lab) = populated();
    let path = home.path().join("events.jsonl");
    let text = fs::read_to_string(&path).unwrap().replacen("\"acme\"", "\"evil\"", 1);
    fs::write(&path, &text).unwrap();
    drop(lab);
    assert!(matches!(&problems(home.path())[..], [Problem::LogBroken { why }] if why.contains("hash chain broken")));
    let r = repair_and_prove(home.path());
    assert_eq!(fs::read_to_string(r.old_log.unwrap()).unwrap(), text);
}

#[test]
fn deleted_document_is_rebuilt_from_the_newest_generation() {
    let (home, lab) = populated();
    fs::remove_file(doc_path(home.path())).unwrap();
    let err = lab.registry.snapshot().unwrap_err();
    assert!(matches!(err, RegistryError::DocumentMissing { seq: 8, .. }), "{err:?}");
    assert!(matches!(problems(home.path())[..], [Problem::DocumentMissing { log_seq: 8 }]));
    repair_and_prove(home.path());
    assert_eq!(names(home.path()), ["acme", "globex", "hooli"]);
}

#[test]
fn damaged_document_without_any_generation_is_refused_saying_what_to_restore() {
    let (home, _lab) = populated();
    fs::write(doc_path(home.path()), b"{").unwrap();
    fs::remove_dir_all(generations::dir(home.path())).unwrap();
    let err = repair::repair(&store(home.path()), T0, &actor(), &Client::provider("cli")).unwrap_err();
    assert!(err.to_string().contains("Copy a backup of instances.json into place"), "{err}");
    assert_eq!(fs::read(doc_path(home.path())).unwrap(), b"{");
}

#[test]
fn sound_registry_is_left_alone() {
    let (home, lab) = populated();
    let before = fs::read(doc_path(home.path())).unwrap();
    let r = repair::repair(&store(home.path()), T0, &actor(), &Client::provider("cli")).unwrap();
    assert!(r.plan.is_none());
    assert_eq!(fs::read(doc_path(home.path())).unwrap(), before);
    assert_eq!(lab.registry.verify_events().unwrap().events, 8);
}
