//! Serial console tails: the last lines of each machine's console log under `console/`
//! (libvirt), shown with the error when a boot fails.

use std::path::Path;

use crate::backend::BackendError;

use super::config::VagrantBackend;
use super::hypervisor::Hypervisor;
use super::{render, runner};

/// How many lines of a serial console an error shows.
pub(super) const CONSOLE_LINES: usize = 12;

/// The last `n` lines of a serial console log that hold text (escape sequences and carriage
/// returns removed).
pub fn console_tail(log: &str, n: usize) -> Vec<String> {
    let clean = |line: &str| {
        let text = runner::strip_ansi(line);
        text.chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect::<String>()
            .trim_end()
            .to_string()
    };
    let lines: Vec<String> = log.lines().map(clean).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

impl VagrantBackend {
    /// `err` with the last lines of the serial consoles of `nodes` (libvirt keeps them in the
    /// instance folder); `err` itself when there are none.
    pub(super) fn with_consoles(&self, err: BackendError, dir: &Path, nodes: &[&str]) -> BackendError {
        if self.cfg.hypervisor != Hypervisor::Libvirt {
            return err;
        }
        let mut consoles = String::new();
        for node in nodes {
            let path = dir.join(render::console_log(node));
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let tail = console_tail(&String::from_utf8_lossy(&bytes), CONSOLE_LINES);
            let shown = if tail.is_empty() { "(nothing yet)".to_string() } else { tail.join("\n") };
            consoles.push_str(&format!(
                "last lines of the serial console of {node} ({}):\n{shown}\n",
                path.display()
            ));
        }
        if consoles.is_empty() {
            err
        } else {
            BackendError::WithConsoles { source: Box::new(err), consoles: consoles.trim_end().to_string() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vagrant::VagrantConfig;
    use std::time::Duration;

    #[test]
    fn a_failed_boot_shows_the_consoles_of_the_machines_it_was_starting() {
        let home = tempfile::tempdir().unwrap();
        let mut cfg = VagrantConfig::new(home.path());
        cfg.hypervisor = Hypervisor::Libvirt;
        let backend = VagrantBackend::new(cfg.clone());
        let dir = backend.instance_dir("acme").unwrap();
        std::fs::create_dir_all(dir.join("console")).unwrap();
        std::fs::write(dir.join(render::console_log("acme-cp-1")), "Booting\r\nGave up waiting for root file system device.\r\n").unwrap();
        let timeout = || BackendError::Timeout { timeout: Duration::from_secs(480), running: "vagrant up".into() };
        let err = backend.with_consoles(timeout(), &dir, &["acme-cp-1", "acme-worker-1"]);
        let text = err.to_string();
        assert!(matches!(err, BackendError::WithConsoles { .. }), "{err:?}");
        assert!(text.starts_with("timed out after 480s while running `vagrant up`"), "{text}");
        assert!(text.contains("last lines of the serial console of acme-cp-1"), "{text}");
        assert!(text.ends_with("Booting\nGave up waiting for root file system device."), "{text}");
        assert!(!text.contains("acme-worker-1"), "a machine without a console log is not listed: {text}");
        // VirtualBox keeps no console file: the error stays as it was.
        cfg.hypervisor = Hypervisor::VirtualBox;
        let err = VagrantBackend::new(cfg).with_consoles(timeout(), &dir, &["acme-cp-1"]);
        assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn console_tails_drop_escapes_and_blank_lines() {
        let log = "SeaBIOS\r\n\u{1b}[0m\u{1b}[1;31mBegin: Mounting root\u{1b}[0m\r\n\r\n  \r\nGave up waiting for root file system device.\r\n(initramfs) ";
        assert_eq!(
            console_tail(log, 2),
            vec!["Gave up waiting for root file system device.".to_string(), "(initramfs)".to_string()]
        );
        assert_eq!(console_tail(log, 10)[1], "Begin: Mounting root");
        assert!(console_tail("", 5).is_empty());
    }
}
