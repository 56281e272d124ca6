//! The audit log (`events.jsonl`, maybe cut short by a crash or edited): verification and the
//! head a writer chains after never panic; on a log that verifies, the head is its last line.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use homelab::audit;

fn scratch() -> &'static std::path::Path {
    static D: OnceLock<std::path::PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let d = std::path::PathBuf::from(format!("{base}/homelab-fuzz-events-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("events.jsonl");
    let verified = audit::verify_from(data, &path, None);
    std::fs::write(&path, data).unwrap();
    let head = audit::open_head(&path);
    if let (Ok(v), Ok(h)) = (&verified, &head) {
        if data.ends_with(b"\n") || data.is_empty() {
            assert_eq!(v.head, *h, "verified head and writer's head differ");
        }
    }
    let _ = audit::read_all(&path);
});
