//! What a valid registry document is, as every reader checks it: the bytes of
//! `instances.json` (or of a generation) parsed into a [`Document`] of this build's format
//! version, entries filed under their own valid names, canonical CIDRs; and the instance name
//! rule itself.

use std::path::Path;

use super::{Allocation, Document, RegistryError, FORMAT_VERSION};

/// Check an instance name (names become hostnames, folder names and interface names).
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName {
            name: name.to_string(),
        })
    }
}

pub(crate) fn check_version(raw: &serde_json::Value, path: &std::path::Path) -> Result<(), RegistryError> {
    match raw.get("version") {
        Some(v) if v.as_u64() == Some(u64::from(FORMAT_VERSION)) => Ok(()),
        Some(v) => Err(RegistryError::UnknownVersion {
            path: path.into(),
            found: v.to_string(),
        }),
        None => Err(RegistryError::Corrupt {
            path: path.into(),
            why: "no `version` field".into(),
        }),
    }
}

/// What a hand edit (or another program) may have broken that serde does not check: each entry
/// filed under its own name, names that follow the naming rule (they become folder and
/// interface names), and CIDRs without host bits.
pub(crate) fn check_document(doc: &Document) -> Result<(), String> {
    for (key, e) in &doc.instances {
        if key != &e.name {
            return Err(format!("entry `{key}` has name `{}`", e.name));
        }
        validate_name(key).map_err(|err| format!("entry {key:?}: {err}"))?;
        check_canonical(key, &e.allocation)?;
    }
    for (key, r) in &doc.released {
        check_canonical(key, &r.allocation).map_err(|why| format!("released {why}"))?;
    }
    Ok(())
}

fn check_canonical(name: &str, a: &Allocation) -> Result<(), String> {
    for (kind, cidr) in a.iter() {
        if cidr.trunc() != cidr {
            return Err(format!(
                "entry `{name}`: {} {cidr} has host bits set: the network is {}",
                kind.attribute(),
                cidr.trunc()
            ));
        }
    }
    Ok(())
}

/// The document in `bytes` (the content of `path`), checked as every reader checks it: JSON of
/// this build's format version, entries filed under their own valid names, canonical CIDRs.
pub fn parse_document(bytes: &[u8], path: &Path) -> Result<Document, RegistryError> {
    // One parse in the common case; the version is looked at first only when the document
    // does not fit this build's format, so that a newer format is reported as such.
    let doc: Document = match serde_json::from_slice(bytes) {
        Ok(doc) => doc,
        Err(e) => {
            let raw: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| RegistryError::Corrupt {
                path: path.into(),
                why: e.to_string(),
            })?;
            check_version(&raw, path)?;
            return Err(RegistryError::Corrupt {
                path: path.into(),
                why: e.to_string(),
            });
        }
    };
    if doc.version != FORMAT_VERSION {
        return Err(RegistryError::UnknownVersion {
            path: path.into(),
            found: doc.version.to_string(),
        });
    }
    check_document(&doc).map_err(|why| RegistryError::Corrupt { path: path.into(), why })?;
    Ok(doc)
}
