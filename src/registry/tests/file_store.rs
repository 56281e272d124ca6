//! The file store in a temporary folder: the seed's file test, atomic writes, repair of the
//! event log after a crash, and bad inputs that stop every operation and change nothing.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;
use crate::registry::file::FileStore;

fn file_lab(home: &Path) -> Lab {
    Lab::on(Arc::new(FileStore::new(home)), default_pools())
}

fn registry_path(home: &Path) -> PathBuf {
    home.join("instances.json")
}

fn events_path(home: &Path) -> PathBuf {
    home.join("events.jsonl")
}

/// What the registry files are: bytes of regular files, targets of symbolic links, or "dir".
fn fingerprint(home: &Path) -> Vec<(String, String)> {
    ["instances.json", "events.jsonl"]
        .iter()
        .map(|name| {
            let p = home.join(name);
            let what = match fs::symlink_metadata(&p) {
                Err(_) => "absent".to_string(),
                Ok(m) if m.file_type().is_symlink() => {
                    format!("symlink to {}", fs::read_link(&p).unwrap().display())
                }
                Ok(m) if m.is_dir() => "dir".to_string(),
                Ok(_) => String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned(),
            };
            (name.to_string(), what)
        })
        .collect()
}

fn temp_files(home: &Path) -> Vec<String> {
    fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The seed's file test
// ---------------------------------------------------------------------------------------------

#[test]
fn document_is_versioned_json_and_no_temp_file_is_left() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let text = fs::read_to_string(registry_path(home.path())).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(raw["version"], FORMAT_VERSION);
    let acme = &raw["instances"]["acme"];
    assert_eq!(acme["subnet"], "192.168.56.0/24");
    assert_eq!(acme["pod_cidr"], "10.244.0.0/16");
    assert_eq!(acme["service_cidr"], "10.96.0.0/16");
    assert_eq!(acme["status"], "allocated");
    assert_eq!(acme["federated"], serde_json::json!([]));
    assert!(acme["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(text.ends_with('\n'));
    assert_eq!(temp_files(home.path()), Vec::<String>::new());
}

#[test]
fn entries_are_written_in_the_documented_form_and_read_back_exactly() {
    let mut doc = Document::default();
    let times = [T0, T0 + Duration::from_nanos(123_456_789)];
    for (i, cidr) in ["0.0.0.0/0", "255.255.255.255/32", "10.96.0.0/12", "192.168.56.0/24", "1.20.3.0/24"]
        .iter()
        .enumerate()
    {
        let name = format!("e{i}");
        let entry = Entry {
            name: name.clone(),
            allocation: Allocation {
                subnet: n(cidr),
                pod_cidr: n("10.244.0.0/16"),
                service_cidr: n("10.100.10.0/24"),
                mgmt_cidr: (i % 2 == 0).then(|| n("172.30.7.0/24")),
            },
            backend: "netns".into(),
            status: if i % 2 == 0 { Status::Allocated } else { Status::Reserved },
            created_at: times[i % 2],
            federated: if i == 0 { vec!["e2".into()] } else { vec![] },
            reservation: (i % 2 == 1).then(|| Reservation {
                reserved_at: times[1],
                by: actor(),
                expires_at: times[1] + TTL,
                first_run: (i == 3).then(|| "00ff00ff00ff00ff".into()),
                pinned: if i == 3 { vec![Kind::Subnet, Kind::MgmtCidr] } else { vec![] },
                taken: (i == 3).then(|| TakenOver {
                    by: "e1".into(),
                    run: "0123456789abcdef".into(),
                    at: times[1],
                    why: "they had been chosen automatically, and a pinned value takes precedence".into(),
                }),
            }),
            lab: (i % 2 == 0).then(lab_record),
            owner: (i > 1).then(|| Workspace {
                host: "lab-host".into(),
                dir: format!("/work/ws{i}"),
                name: "default".into(),
            }),
            run: (i > 2).then(|| "0123456789abcdef".into()),
            creating: (i == 2).then(|| Creating {
                since: times[0],
                run: "0123456789abcdef".into(),
                removing: false,
                process: Some("0b5e7c3a-1f2d-4e6a-9c8b-7a6d5e4f3c2b/4242/123456".into()),
                answered: Some(times[1]),
            }),
        };
        doc.instances.insert(name, entry);
    }
    let text = serde_json::to_string(&doc.instances["e0"]).unwrap();
    assert_eq!(
        text,
        "{\"name\":\"e0\",\"subnet\":\"0.0.0.0/0\",\"pod_cidr\":\"10.244.0.0/16\",\"service_cidr\":\"10.100.10.0/24\",\
         \"mgmt_cidr\":\"172.30.7.0/24\",\"backend\":\"netns\",\"status\":\"allocated\",\"created_at\":\"2024-03-01T12:00:00Z\",\
         \"federated\":[\"e2\"],\"lab\":{\"control_planes\":1,\"workers\":2,\"settings\":{}}}"
    );
    for e in doc.instances.values() {
        let raw = serde_json::to_value(e).unwrap();
        assert_eq!(raw["subnet"], e.allocation.subnet.to_string());
        assert_eq!(raw["service_cidr"], e.allocation.service_cidr.to_string());
    }
    let bytes = serde_json::to_vec_pretty(&doc).unwrap();
    assert_eq!(serde_json::from_slice::<Document>(&bytes).unwrap(), doc);
}

#[test]
fn temp_file_left_by_a_crashed_writer_is_ignored_and_removed() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let before = fs::read(registry_path(home.path())).unwrap();
    // A writer killed before its rename leaves a half-written temp file behind.
    fs::write(home.path().join(".instances.json.tmp-999999"), b"{\"version\": 1, \"inst").unwrap();
    assert_eq!(fs::read(registry_path(home.path())).unwrap(), before);
    assert_eq!(lab.registry.snapshot().unwrap().instances.len(), 1);
    lab.reserve("globex");
    assert_eq!(temp_files(home.path()), Vec::<String>::new());
    assert_eq!(lab.registry.snapshot().unwrap().instances.len(), 2);
}

#[test]
fn reading_a_registry_that_does_not_exist_creates_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("home");
    let lab = file_lab(&home);
    assert_eq!(lab.registry.preview("acme", &Wants::auto(false), &[]).unwrap().status, "free");
    assert_eq!(lab.registry.snapshot().unwrap(), Document::default());
    assert!(lab.registry.reservations().unwrap().is_empty());
    assert!(!home.exists(), "a read created the registry folder");
    lab.reserve("acme");
    assert!(registry_path(&home).is_file());
}

#[test]
fn crash_between_document_and_log_is_repaired_by_next_writer() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let log_before = fs::read(events_path(home.path())).unwrap();
    lab.reserve("globex");
    let log_after = fs::read(events_path(home.path())).unwrap();
    // The writer of "reserve globex" died after renaming the document, before appending.
    fs::write(events_path(home.path()), &log_before).unwrap();
    let err = lab.registry.verify_events().unwrap_err();
    assert!(err.to_string().contains("the registry records the newest event as seq 3"), "{err}");
    // The next writer appends the missing event first, then its own.
    lab.reserve("initech");
    let log = fs::read(events_path(home.path())).unwrap();
    assert!(log.starts_with(&log_after), "the repaired event is the one the crashed writer made");
    let v = lab.registry.verify_events().unwrap();
    assert_eq!(v.events, 4);
    assert_eq!(
        lab.actions(),
        [
            "instance.reserve acme",
            "instance.allocate acme",
            "instance.reserve globex",
            "instance.reserve initech"
        ]
    );
}

#[test]
fn torn_event_line_is_replaced_by_next_writer() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let log_before = fs::read(events_path(home.path())).unwrap();
    lab.reserve("globex");
    let log_after = fs::read(events_path(home.path())).unwrap();
    // The append was cut short: half of the new line made it to disk.
    let torn = &log_after[..log_before.len() + (log_after.len() - log_before.len()) / 2];
    fs::write(events_path(home.path()), torn).unwrap();
    // A no-op change (a retried claim) is still a writer: it repairs the log.
    let acme = lab.registry.get("acme").unwrap().unwrap();
    lab.registry.claim("acme", &acme.allocation, "netns", lab_record(), &[]).unwrap();
    assert_eq!(fs::read(events_path(home.path())).unwrap(), log_after);
    assert_eq!(lab.registry.verify_events().unwrap().events, 3);
}

#[test]
fn edited_event_log_stops_writers_before_anything_is_written() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let text = fs::read_to_string(events_path(home.path())).unwrap();
    fs::write(events_path(home.path()), text.replace("\"workers\":2", "\"workers\":9")).unwrap();
    let before = fingerprint(home.path());
    let err = lab
        .registry
        .reserve("globex", &Wants::auto(false), "netns", &[])
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Audit(_)), "{err:?}");
    assert!(msg.contains(&events_path(home.path()).display().to_string()), "{msg}");
    assert!(msg.contains("hash chain broken"), "{msg}");
    assert_eq!(fingerprint(home.path()), before);
    assert!(lab.registry.verify_events().is_err());
}

#[test]
fn malformed_event_log_stops_writers_naming_the_line() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    let mut text = fs::read_to_string(events_path(home.path())).unwrap();
    text.push_str("not an event\n");
    fs::write(events_path(home.path()), text).unwrap();
    let before = fingerprint(home.path());
    let err = lab.registry.release("acme").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("events.jsonl, line 3: not an event"), "{msg}");
    assert_eq!(fingerprint(home.path()), before);
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: each stops every operation with an error naming the file and what is wrong,
// and leaves the files as they were.
// ---------------------------------------------------------------------------------------------

/// Run every kind of operation against a damaged home; each must fail with a message that
/// names `instances.json` and contains every one of `expect`, and nothing may change.
fn assert_every_operation_refused(home: &Path, expect: &[&str]) {
    let lab = file_lab(home);
    let before = fingerprint(home);
    let path = registry_path(home).display().to_string();
    let a = Allocation {
        subnet: n("192.168.60.0/24"),
        pod_cidr: n("10.250.0.0/16"),
        service_cidr: n("10.100.0.0/16"),
        mgmt_cidr: None,
    };
    let results: Vec<(&str, Result<(), RegistryError>)> = vec![
        ("snapshot", lab.registry.snapshot().map(drop)),
        ("preview", lab.registry.preview("fresh", &Wants::auto(false), &[]).map(drop)),
        ("reserve", lab.registry.reserve("fresh", &Wants::auto(false), "netns", &[]).map(drop)),
        ("claim", lab.registry.claim("fresh", &a, "netns", lab_record(), &[]).map(drop)),
        ("release", lab.registry.release("acme").map(drop)),
        ("drop", lab.registry.drop_reservations(&[], false).map(drop)),
        ("federate", lab.registry.federate("acme", "globex", fed_record(), serde_json::json!({})).map(drop)),
        ("verify", lab.registry.verify_events().map(drop)),
    ];
    for (op, result) in results {
        let err = result.expect_err(op);
        let msg = err.to_string();
        assert!(msg.contains(&path), "{op}: the message does not name the file: {msg}");
        for e in expect {
            assert!(msg.contains(e), "{op}: expected {e:?} in: {msg}");
        }
    }
    assert_eq!(fingerprint(home), before, "a refused operation changed the files");
    assert_eq!(temp_files(home), Vec::<String>::new());
}

/// A home with a sound registry of two instances, whose document is then replaced by `text`.
fn home_with_document(text: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    lab.create("globex");
    fs::write(registry_path(home.path()), text).unwrap();
    home
}

#[test]
fn corrupt_json_stops_every_operation_and_changes_nothing() {
    let home = home_with_document("{\"version\": 1, \"instances\": {\"acme\": ");
    assert_every_operation_refused(home.path(), &["the registry is corrupt", "EOF while parsing", "nothing was changed"]);
}

#[test]
fn empty_file_is_corrupt() {
    let home = home_with_document("");
    assert_every_operation_refused(home.path(), &["the registry is corrupt"]);
}

#[test]
fn unknown_version_stops_every_operation_and_changes_nothing() {
    let home = home_with_document("{\"version\": 2, \"instances\": {}, \"released\": {}}\n");
    assert_every_operation_refused(
        home.path(),
        &["registry format version 2 is not supported", "reads version 1"],
    );
}

#[test]
fn missing_version_is_corrupt() {
    let home = home_with_document("{\"instances\": {}}\n");
    assert_every_operation_refused(home.path(), &["the registry is corrupt", "no `version` field"]);
}

#[test]
fn document_of_the_wrong_shape_is_corrupt() {
    let home = home_with_document("{\"version\": 1, \"instances\": {\"acme\": {\"name\": \"acme\"}}}\n");
    assert_every_operation_refused(home.path(), &["the registry is corrupt", "missing field"]);
}

/// The sound two-instance document of a fresh home, edited by `edit`.
fn home_with_edited_document(edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    lab.create("acme");
    lab.create("globex");
    let mut raw: serde_json::Value =
        serde_json::from_slice(&fs::read(registry_path(home.path())).unwrap()).unwrap();
    edit(&mut raw);
    fs::write(registry_path(home.path()), serde_json::to_vec_pretty(&raw).unwrap()).unwrap();
    home
}

#[test]
fn non_canonical_cidr_in_the_file_is_corrupt_naming_entry_and_attribute() {
    let home = home_with_edited_document(|raw| {
        raw["instances"]["globex"]["pod_cidr"] = "10.245.3.0/16".into();
    });
    assert_every_operation_refused(
        home.path(),
        &["the registry is corrupt", "`globex`", "pod_cidr 10.245.3.0/16 has host bits set", "10.245.0.0/16"],
    );
}

#[test]
fn bad_name_in_the_file_is_corrupt() {
    let home = home_with_edited_document(|raw| {
        let entry = raw["instances"]["globex"].take();
        let mut entry = entry;
        entry["name"] = "../globex".into();
        let map = raw["instances"].as_object_mut().unwrap();
        map.remove("globex");
        map.insert("../globex".into(), entry);
    });
    assert_every_operation_refused(home.path(), &["the registry is corrupt", "\"../globex\"", "lowercase DNS label"]);
}

#[test]
fn entry_filed_under_another_name_is_corrupt() {
    let home = home_with_edited_document(|raw| {
        raw["instances"]["globex"]["name"] = "initech".into();
    });
    assert_every_operation_refused(home.path(), &["entry `globex` has name `initech`"]);
}

#[test]
fn registry_that_is_a_directory_is_unreadable() {
    let home = tempfile::tempdir().unwrap();
    fs::create_dir(registry_path(home.path())).unwrap();
    fs::write(registry_path(home.path()).join("keep"), b"x").unwrap();
    assert_every_operation_refused(home.path(), &["cannot read the registry", "Is a directory"]);
    assert!(registry_path(home.path()).join("keep").is_file());
}

#[test]
fn registry_that_is_a_dangling_symlink_is_unreadable() {
    let home = tempfile::tempdir().unwrap();
    let target = home.path().join("moved-away.json");
    symlink(&target, registry_path(home.path())).unwrap();
    assert_every_operation_refused(
        home.path(),
        &["cannot read the registry", "symbolic link", "moved-away.json", "does not exist"],
    );
    assert!(!target.exists(), "nothing was created behind the link");
}

#[test]
fn registry_that_is_a_looping_symlink_is_unreadable() {
    let home = tempfile::tempdir().unwrap();
    symlink(home.path().join("loop-b"), registry_path(home.path())).unwrap();
    symlink(registry_path(home.path()), home.path().join("loop-b")).unwrap();
    assert_every_operation_refused(home.path(), &["cannot read the registry", "symbolic links"]);
}

#[test]
fn refused_requests_on_a_sound_file_leave_its_bytes_unchanged() {
    let home = tempfile::tempdir().unwrap();
    let lab = file_lab(home.path());
    for i in 0..8 {
        lab.create(&format!("lab{i}"));
    }
    let before = fingerprint(home.path());
    let taken = lab.registry.get("lab0").unwrap().unwrap().allocation;
    let mut host_bits = Wants::auto(false);
    host_bits.pod_cidr = Want::Pinned(n("10.250.0.1/16"));
    let errors = [
        lab.registry.reserve("../x", &Wants::auto(false), "netns", &[]).unwrap_err(),
        lab.registry.reserve("ninth", &Wants::auto(false), "netns", &[]).unwrap_err(),
        lab.registry.reserve("ninth", &host_bits, "netns", &[]).unwrap_err(),
        lab.registry.claim("ninth", &taken, "netns", lab_record(), &[]).unwrap_err(),
    ];
    assert!(errors[0].to_string().contains("invalid instance name \"../x\""), "{}", errors[0]);
    assert!(errors[1].to_string().contains("is full"), "{}", errors[1]);
    assert!(errors[2].to_string().contains("has host bits set"), "{}", errors[2]);
    assert!(errors[3].to_string().contains("no longer free"), "{}", errors[3]);
    assert_eq!(fingerprint(home.path()), before);
    assert_eq!(temp_files(home.path()), Vec::<String>::new());
}

/// Found by the `registry_document` fuzz target: a number too large for an integer in an
/// event's details read back as a slightly different float after a write, so a document did
/// not survive its own write (and a journal re-encoded for the log would hash differently).
#[test]
fn a_document_with_huge_numbers_survives_a_write_and_a_read() {
    let path = std::path::Path::new("instances.json");
    let text = r#"{"version": 1, "instances": {}, "journal": {"seq": 1, "hash": "x", "events": [{"seq": 1, "time": "2026-12-01T13:41:30Z",
        "actor": {"user": "root", "uid": 0, "host": "vm", "pid": 1}, "client": {"provider": "p", "terraform": "1.11.4"},
        "action": "instance.allocate", "subject": "acme",
        "details": {"n": 1377777777777777777777777777777777777777777777777777777777777, "f": 0.1, "g": 1e300},
        "prev": "y"}]}}"#;
    let doc = super::super::parse_document(text.as_bytes(), path).unwrap();
    let written = serde_json::to_vec(&doc).unwrap();
    assert_eq!(super::super::parse_document(&written, path).unwrap(), doc);
}
