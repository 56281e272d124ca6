//! The Vagrant backend itself: its configuration (binary, hypervisor, libvirt driver, the
//! wrapper host commands run through), the [`VagrantBackend`] value with the paths of an
//! instance's folder, and how it builds host and vagrant commands (secrets marked where they
//! are made). The lifecycle is in the module's root; the other rooms extend this type.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::{BackendError, LabSpec};
use crate::process::Cmd;

use super::hypervisor::{Hypervisor, LibvirtDriver};
use super::render::{self, RenderError, RenderTarget};
use super::runner::{self, Finished, Grace, Limits, ToolCommand};

/// How the Vagrant backend runs on this host.
#[derive(Debug, Clone)]
pub struct VagrantConfig {
    /// The `vagrant` program (default `vagrant` on PATH).
    pub vagrant_bin: PathBuf,
    /// VirtualBox or libvirt.
    pub hypervisor: Hypervisor,
    /// kvm or qemu (libvirt only).
    pub libvirt_driver: LibvirtDriver,
    /// The registry folder; instance folders are `<home>/instances/<name>/`.
    pub home: PathBuf,
    /// Extra environment for every vagrant run (e.g. `VAGRANT_HOME`).
    pub env: Vec<(String, String)>,
    /// Prefix for every host command (vagrant, virsh, ip), e.g. `nsenter --net=… --`.
    pub exec_prefix: Vec<String>,
    /// Network namespace holding the lab's host side (libvirt's bridges), for forwarding;
    /// `None`: the current one.
    pub host_netns: Option<String>,
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Bring machines up in parallel (libvirt); off by default, as Vagrant advises.
    pub parallel: bool,
    /// Grace periods when stopping a vagrant run.
    pub grace: Grace,
}

impl VagrantConfig {
    /// Defaults (VirtualBox, `vagrant` on PATH) for a registry at `home`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        VagrantConfig {
            vagrant_bin: PathBuf::from("vagrant"),
            hypervisor: Hypervisor::VirtualBox,
            libvirt_driver: LibvirtDriver::Kvm,
            home: home.into(),
            env: Vec::new(),
            exec_prefix: Vec::new(),
            host_netns: None,
            libvirt_uri: "qemu:///system".to_string(),
            parallel: false,
            grace: Grace::default(),
        }
    }
}

/// Timeout of the short read-only commands (status, virsh, ssh probes).
pub(super) const QUICK: Duration = Duration::from_secs(120);

/// The Vagrant backend. See the module documentation.
#[derive(Debug, Clone)]
pub struct VagrantBackend {
    pub(super) cfg: VagrantConfig,
}

impl VagrantBackend {
    /// A backend with this configuration.
    pub fn new(config: VagrantConfig) -> Self {
        VagrantBackend { cfg: config }
    }

    /// Its configuration.
    pub fn config(&self) -> &VagrantConfig {
        &self.cfg
    }

    /// `<home>/instances/<name>/` (an error when `name` is not a DNS label).
    pub fn instance_dir(&self, instance: &str) -> Result<PathBuf, BackendError> {
        if !render::is_dns_label(instance) {
            return Err(RenderError::BadName(instance.to_string()).into());
        }
        Ok(self.cfg.home.join("instances").join(instance))
    }

    /// The instance's generated Vagrantfile.
    pub fn vagrantfile_path(&self, instance: &str) -> Result<PathBuf, BackendError> {
        Ok(self.instance_dir(instance)?.join(render::VAGRANTFILE))
    }

    /// Where the instance's kubeconfig is written after provisioning (mode 0600).
    pub fn kubeconfig_path(&self, instance: &str) -> Result<PathBuf, BackendError> {
        Ok(self.instance_dir(instance)?.join("kubeconfig"))
    }

    pub(super) fn target(&self) -> RenderTarget {
        RenderTarget {
            hypervisor: self.cfg.hypervisor,
            libvirt_driver: self.cfg.libvirt_driver,
        }
    }

    /// A host command, through the configured prefix.
    pub(super) fn host_cmd<I, S>(&self, argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut full: Vec<String> = self.cfg.exec_prefix.clone();
        full.extend(Cmd::new(argv).argv);
        Cmd::new(full)
    }

    /// A vagrant command for the instance folder `dir`.
    pub(super) fn vagrant_cmd(&self, dir: &Path, args: &[String], log_at_info: bool) -> ToolCommand {
        let mut argv = vec![self.cfg.vagrant_bin.to_string_lossy().into_owned()];
        argv.extend(args.iter().cloned());
        let mut env = vec![
            // The prefix may change directories (nsenter does): Vagrant finds its folder here.
            (
                "VAGRANT_CWD".to_string(),
                dir.to_string_lossy().into_owned(),
            ),
            ("VAGRANT_CHECKPOINT_DISABLE".to_string(), "1".to_string()),
            (
                "VAGRANT_BOX_UPDATE_CHECK_DISABLE".to_string(),
                "1".to_string(),
            ),
            ("VAGRANT_NO_COLOR".to_string(), "1".to_string()),
        ];
        if self.cfg.hypervisor == Hypervisor::Libvirt {
            env.push((
                "LIBVIRT_DEFAULT_URI".to_string(),
                self.cfg.libvirt_uri.clone(),
            ));
        }
        env.extend(self.cfg.env.iter().cloned());
        ToolCommand {
            cmd: self.host_cmd(argv),
            cwd: Some(dir.to_path_buf()),
            env,
            log_at_info,
            on_line: None,
            secret_output: false,
            pidfile: None,
        }
    }

    pub(super) async fn vagrant(
        &self,
        dir: &Path,
        args: &[&str],
        limits: &Limits,
        log_at_info: bool,
    ) -> Result<Finished, BackendError> {
        self.vagrant_with(dir, args, limits, log_at_info, None, Secrecy::NONE).await
    }

    /// [`Self::vagrant`] for a command that carries secrets: `secrets` are values in `args`
    /// never to be shown, `secret_output` says whether what it prints holds secrets (see
    /// `runner::ToolCommand`).
    pub(super) async fn vagrant_secret(
        &self,
        dir: &Path,
        args: &[&str],
        limits: &Limits,
        secrets: &[&str],
        secret_output: bool,
    ) -> Result<Finished, BackendError> {
        let secrecy = Secrecy { values: secrets, output: secret_output };
        self.vagrant_with(dir, args, limits, !secret_output, None, secrecy).await
    }

    /// Stop a vagrant command a killed provider left running in `dir`.
    pub(super) async fn stop_left_running(&self, dir: &Path) {
        if let Some(pid) = runner::stop_left_running(&dir.join(RUNNING_FILE), self.cfg.grace).await {
            tracing::warn!(folder = %dir.display(), pid, "stopped a vagrant command that a killed provider had left running");
        }
    }

    /// Run `command` in every node of the spec with `vagrant ssh -c`, all nodes at once
    /// (each is its own vagrant process group); results in node order.
    pub(super) async fn ssh_each(
        &self,
        spec: &LabSpec,
        command: &str,
        limits: &Limits,
    ) -> Result<Vec<(String, Finished)>, BackendError> {
        let dir = self.instance_dir(&spec.instance)?;
        let mut set = tokio::task::JoinSet::new();
        for (i, node) in spec.nodes.iter().enumerate() {
            let (this, dir, limits) = (self.clone(), dir.clone(), limits.clone());
            let (name, command) = (node.name.clone(), command.to_string());
            set.spawn(async move {
                let f = this
                    .vagrant(
                        &dir,
                        &["ssh", &name, "--no-tty", "-c", &command],
                        &limits,
                        false,
                    )
                    .await;
                (i, name, f)
            });
        }
        let mut out: Vec<Option<(String, Finished)>> = vec![None; spec.nodes.len()];
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let (i, name, f) =
                joined.map_err(|source| BackendError::Task { what: "a `vagrant ssh` of this operation".into(), source })?;
            match f {
                Ok(f) => out[i] = Some((name, f)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// What of a vagrant command must never be shown (see `runner::ToolCommand`).
#[derive(Clone, Copy)]
pub(super) struct Secrecy<'a> {
    /// Values in its arguments.
    pub(super) values: &'a [&'a str],
    /// Its whole output.
    pub(super) output: bool,
}

impl Secrecy<'_> {
    pub(super) const NONE: Secrecy<'static> = Secrecy { values: &[], output: false };
}

/// While a vagrant command on every machine of an instance folder runs, this file of the
/// folder names its process; a provider killed meanwhile leaves it (see
/// `runner::stop_left_running`).
pub const RUNNING_FILE: &str = "vagrant-running.pid";

