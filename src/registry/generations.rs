//! The previous good versions of `instances.json`: `<home>/generations/instances.<seq>.json`,
//! one per commit, named by the seq of the newest event of that commit (the document's
//! `journal.seq`), the newest [`KEEP`] kept.
//!
//! A generation is its own file, written (temp file, fsync, rename) just before the document's
//! temp file is renamed over `instances.json`. It is deliberately not a hard link to the
//! document: the store never writes in place, but people and their tools do (`cp` onto an
//! existing file, `echo … >`, editors such as vim on a file with several links), and a write
//! into a shared inode would damage the generation together with the document it is there to
//! bring back. A writer killed between the two renames leaves a generation newer than the
//! document; it never became the registry, and the next commit removes it before writing its
//! own. These are what `registry check` compares the document against and what
//! `registry repair` rebuilds from (see [`super::repair`]).

use std::fs;
use std::path::{Path, PathBuf};

use super::format::parse_document;
use super::{Document, RegistryError};

/// How many generations are kept.
pub const KEEP: usize = 8;

/// The folder of the generations of the registry in `home`.
pub fn dir(home: &Path) -> PathBuf {
    home.join("generations")
}

/// The generation of change `seq`.
pub fn path(home: &Path, seq: u64) -> PathBuf {
    dir(home).join(format!("instances.{seq}.json"))
}

/// The seq in a generation's file name.
fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix("instances.")?.strip_suffix(".json")?.parse().ok()
}

/// Every generation's seq and path, newest first (none when the folder does not exist).
pub fn list(home: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir(home)) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| seq_of(&e.file_name().to_string_lossy()).map(|s| (s, e.path())))
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out
}

/// A generation, read and checked as the live document is.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The seq of its commit.
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its document (`Err`: it does not parse, e.g. a disk error).
    pub doc: Result<Document, String>,
}

/// Read the generation at `path` (seq `seq`).
pub fn read(seq: u64, path: &Path) -> Option<Generation> {
    let bytes = fs::read(path).ok()?;
    let doc = parse_document(&bytes, path).map_err(|e| e.to_string());
    Some(Generation {
        seq,
        path: path.into(),
        bytes,
        doc,
    })
}

/// Every generation, newest first.
pub fn read_all(home: &Path) -> Vec<Generation> {
    list(home).into_iter().filter_map(|(s, p)| read(s, &p)).collect()
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io {
        path,
        what,
        source,
    }
}

/// Write `bytes` (the document about to become that of change `seq`) as that change's
/// generation, durably. Generations of `seq` and later are left by writers killed before their
/// rename: they never became the registry and are removed first.
pub fn write(home: &Path, seq: u64, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let d = dir(home);
    if !d.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(io(&d, "cannot create the generations folder"))?;
    }
    for (s, p) in list(home) {
        if s >= seq {
            fs::remove_file(&p).map_err(io(&p, "cannot remove a generation that never became the registry"))?;
        }
    }
    let tmp = d.join(format!(".instances.{seq}.json.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp, "cannot write the registry's generation"))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp, "cannot write the registry's generation"))?;
    drop(f);
    let p = path(home, seq);
    fs::rename(&tmp, &p).map_err(io(&p, "cannot write the registry's generation"))
}

/// Keep the newest [`KEEP`] generations; fsync the folder. Failures only warn: the commit is
/// done, and an extra generation harms nothing.
pub fn prune(home: &Path) {
    for (_, p) in list(home).into_iter().skip(KEEP) {
        if let Err(e) = fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove an old generation");
        }
    }
    if let Err(e) = fs::File::open(dir(home)).and_then(|d| d.sync_all()) {
        tracing::warn!(path = %dir(home).display(), error = %e, "cannot sync the generations folder");
    }
}

/// Move every generation into `generations/<folder>/` (a repair that starts a new event chain
/// keeps the old ones there: their seqs belong to the old chain).
pub fn set_aside(home: &Path, folder: &str) -> Result<Option<PathBuf>, RegistryError> {
    let all = list(home);
    if all.is_empty() {
        return Ok(None);
    }
    let to = dir(home).join(folder);
    fs::create_dir_all(&to).map_err(io(&to, "cannot create a folder for old generations"))?;
    for (_, p) in all {
        let dest = to.join(p.file_name().expect("generations have names"));
        fs::rename(&p, &dest).map_err(io(&p, "cannot move an old generation aside"))?;
    }
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_seq_and_sort_newest_first() {
        let home = tempfile::tempdir().unwrap();
        fs::create_dir(dir(home.path())).unwrap();
        for s in [3, 10, 1] {
            fs::write(path(home.path(), s), b"{}").unwrap();
        }
        fs::write(dir(home.path()).join("notes.txt"), b"x").unwrap();
        let seqs: Vec<u64> = list(home.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, [10, 3, 1]);
        assert_eq!(seq_of("instances.42.json"), Some(42));
        assert_eq!(seq_of("instances.x.json"), None);
    }
}
