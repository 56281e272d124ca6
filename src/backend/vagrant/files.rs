//! Writing an instance's files: the Vagrantfile and the provisioning scripts (rewritten only
//! when they change), atomically, and the kubeconfig private (mode 0600).

use std::io::Write as _;
use std::path::Path;

use crate::backend::{BackendError, LabSpec};

use super::config::VagrantBackend;
use super::render::{self, render_scripts, render_vagrantfile};

pub(super) fn io_err(path: &Path, source: std::io::Error) -> BackendError {
    BackendError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write `content` to `path` atomically (temporary file + rename), only when it differs.
pub(super) fn write_if_changed(path: &Path, content: &str, mode: u32) -> Result<(), BackendError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    write_atomic(path, content, mode)
}

pub(super) fn write_atomic(path: &Path, content: &str, mode: u32) -> Result<(), BackendError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("homelab-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(content.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Write a secret (the kubeconfig): created 0600, never readable by others even briefly.
pub(super) fn write_private(path: &Path, content: &str) -> Result<(), BackendError> {
    write_atomic(path, content, 0o600)
}

impl VagrantBackend {
    pub(super) fn write_instance_files(&self, spec: &LabSpec, dir: &Path) -> Result<(), BackendError> {
        let vf = render_vagrantfile(spec, self.target())?;
        let scripts = render_scripts(spec)?;
        if !scripts.is_empty() {
            let sdir = dir.join(render::SCRIPTS_DIR);
            std::fs::create_dir_all(&sdir).map_err(|e| io_err(&sdir, e))?;
            for (name, content) in &scripts {
                write_if_changed(&sdir.join(name), content, 0o755)?;
            }
        }
        write_if_changed(&dir.join(render::VAGRANTFILE), &vf, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kubeconfig");
        write_private(&p, "secret").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }
}
