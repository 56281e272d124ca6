//! One first import of a box into libvirt's storage pool at a time.
//!
//! vagrant-libvirt copies a box into the storage pool once, as a base volume, and gives each
//! machine a qcow2 overlay on it. It checks for the base volume and uploads it under a lock of
//! its own process only: a second `vagrant up` (another instance folder, started at the same
//! time, as Terraform applies two instances) finds the volume that the first one has created
//! but not filled yet, skips the upload, and boots its machine on a half-written disk (the
//! guest reads holes: "I/O error, dev vda … EXT4-fs: error loading journal"). Seen with
//! vagrant-libvirt 0.11.2 (its issues #278 and #850 describe the same race).
//!
//! So every `vagrant up` on libvirt holds a host lock per box and libvirt connection until its
//! output shows that it is past the base volume: vagrant-libvirt prints "Creating image
//! (snapshot of base box volume)." right after its upload (or its check that the volume is
//! there) and "Starting domain." for a machine that exists already. Should a future
//! vagrant-libvirt print neither, the lock is held until the command ends: slower, never
//! unsafe. Box downloads (`HandleBox`, before the upload) are serialized along with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::runner::LineHook;
use crate::hostnet::host::HostLock;

/// Lines after which a `vagrant up` no longer touches the base volume.
pub const PAST_THE_BASE_VOLUME: [&str; 2] = ["Creating image (snapshot of base box volume)", "Starting domain."];

/// The host lock of one box on one libvirt connection, held until the `vagrant up` it guards
/// is past the base volume (see the module docs).
#[derive(Debug, Clone)]
pub struct BoxImport {
    lock: Arc<Mutex<Option<HostLock>>>,
}

/// The lock's name for `box_name` on `libvirt_uri`.
pub fn lock_name(box_name: &str, libvirt_uri: &str) -> String {
    let digest = Sha256::digest(format!("{libvirt_uri}\0{box_name}").as_bytes());
    format!("libvirt-box-{}", &hex::encode(digest)[..16])
}

impl BoxImport {
    /// Wait up to `patience` for the lock of `box_name` on `libvirt_uri`.
    pub async fn begin(box_name: &str, libvirt_uri: &str, patience: Duration) -> std::io::Result<BoxImport> {
        let name = lock_name(box_name, libvirt_uri);
        let lock = match HostLock::acquire(&name, Duration::ZERO).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::info!(r#box = %box_name, "waiting for another `vagrant up` to finish importing the box into libvirt's storage pool");
                HostLock::acquire(&name, patience).await?
            }
            Err(e) => return Err(e),
        };
        Ok(BoxImport { lock: Arc::new(Mutex::new(Some(lock))) })
    }

    /// Whether the lock is still held.
    pub fn held(&self) -> bool {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Release the lock now (idempotent).
    pub fn release(&self) {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A hook for the `vagrant up` this guards: releases the lock at the first line showing
    /// that the command is past the base volume.
    pub fn hook(&self) -> LineHook {
        let me = self.clone();
        LineHook(Arc::new(move |line: &str| {
            if me.held() && PAST_THE_BASE_VOLUME.iter().any(|m| line.contains(m)) {
                tracing::info!("past the base volume: releasing the box import lock");
                me.release();
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_serializes_imports_of_one_box_and_the_hook_releases_it() {
        let uri = format!("test:///box-import-{}", std::process::id());
        let first = BoxImport::begin("homelab-test", &uri, Duration::from_secs(5)).await.unwrap();
        // Another box, or another libvirt, is not held up.
        let other = BoxImport::begin("bento/ubuntu-24.04", &uri, Duration::ZERO).await.unwrap();
        other.release();
        // The same box waits (and gives up at its patience) ...
        let err = BoxImport::begin("homelab-test", &uri, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // ... until the first up is past the base volume.
        let hook = first.hook();
        (hook.0)("==> acme-cp-1: Uploading base box image as volume into Libvirt storage...");
        assert!(first.held());
        (hook.0)("==> acme-cp-1: Creating image (snapshot of base box volume).");
        assert!(!first.held());
        let second = BoxImport::begin("homelab-test", &uri, Duration::from_secs(1)).await.unwrap();
        assert!(second.held());
        drop(second);
        assert_ne!(lock_name("a", "qemu:///system"), lock_name("a", "qemu:///session"));
    }
}
