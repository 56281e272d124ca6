//! Instance names (they become host names, folder names and interface names): the rule is
//! checked, and every accepted name really follows it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if homelab::registry::validate_name(name).is_ok() {
        assert!((1..=32).contains(&name.len()), "{name:?}");
        assert!(name.starts_with(|c: char| c.is_ascii_lowercase()) && !name.ends_with('-'), "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{name:?}");
        assert!(homelab::backend::vagrant::render::is_dns_label(name), "{name:?}");
    }
});
