//! The registry document (`instances.json`, maybe hand-edited or from another version): every
//! reader's checks never panic, and an accepted document survives a write and a read unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use homelab::registry::file::parse_document;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("instances.json");
    let Ok(doc) = parse_document(data, path) else { return };
    let written = serde_json::to_vec(&doc).expect("an accepted document serializes");
    let again = parse_document(&written, path).expect("what the registry writes, it reads");
    assert_eq!(again, doc);
});
