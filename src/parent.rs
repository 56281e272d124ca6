//! The Terraform process that started the provider. When it dies (killed with SIGKILL: a
//! cancelled pipeline, the OOM killer), the provider is reparented and nobody will ever read
//! its answers: it stops what it runs (as Terraform's StopProvider would) and exits, instead
//! of finishing `vagrant up`s for a state that cannot record them. Creates still running then
//! leave their registry entries `creating`, for the next apply of the workspace to adopt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static GONE: AtomicBool = AtomicBool::new(false);

/// Whether the process that started the provider has died.
pub fn terraform_gone() -> bool {
    GONE.load(Ordering::SeqCst)
}

/// Watch the parent (every 500 ms); when it is gone, cancel in-flight operations, give them
/// `grace` to stop their child processes, and exit.
pub fn watch(grace: Duration) {
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    if parent <= 1 {
        return; // started by init or a reaper: no Terraform to watch
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            // SAFETY: getppid cannot fail.
            if unsafe { libc::getppid() } != parent {
                GONE.store(true, Ordering::SeqCst);
                tracing::warn!(parent, "Terraform (pid {parent}) is gone: stopping what runs, then exiting");
                tf_provider::stop_token().cancel();
                tokio::time::sleep(grace).await;
                std::process::exit(1);
            }
        }
    });
}
