//! The provider's part of Kubernetes provisioning, after Vagrant's shell provisioners ran:
//! joining the other nodes to the first control plane. The join values (token, CA hash,
//! certificate key) come from the first control plane's own `kubeadm` output; they are parsed
//! and checked against their exact formats, and the join command is rebuilt from them, so
//! nothing a VM prints is ever run as a command elsewhere. The parsing and checking are pure
//! functions; the join flow that drives the nodes over `vagrant ssh` closes the file.

use std::net::Ipv4Addr;

use std::path::Path;

use crate::backend::{BackendError, LabSpec, NodeSpec, Role};

use super::config::VagrantBackend;
use super::files::write_private;
use super::render;
use super::runner::Limits;

/// What a node needs to join the cluster (from `kubeadm token create --print-join-command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinParams {
    /// `host:port` of the API server.
    pub endpoint: String,
    /// Bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// `sha256:<64 hex>` of the cluster CA's public key.
    pub ca_cert_hash: String,
}

fn is_token(t: &str) -> bool {
    let Some((id, secret)) = t.split_once('.') else {
        return false;
    };
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    ok(id, 6) && ok(secret, 16)
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn is_endpoint(e: &str) -> bool {
    let Some((host, port)) = e.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.parse::<u16>().is_ok()
}

/// Parse the output of `kubeadm token create --print-join-command`.
pub fn parse_join_command(out: &str) -> Option<JoinParams> {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kubeadm join "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let endpoint = words.get(2)?.to_string();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    let token = after("--token")?;
    let ca_cert_hash = after("--discovery-token-ca-cert-hash")?;
    let hash_ok = ca_cert_hash
        .strip_prefix("sha256:")
        .is_some_and(|h| is_hex(h, 64));
    (is_endpoint(&endpoint) && is_token(&token) && hash_ok).then_some(JoinParams {
        endpoint,
        token,
        ca_cert_hash,
    })
}

/// The certificate key printed last by `kubeadm init phase upload-certs --upload-certs`.
pub fn parse_certificate_key(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .rev()
        .find(|l| is_hex(l, 64))
        .map(str::to_string)
}

/// The `kubeadm join` command line for `node` (run with sudo inside the node).
pub fn join_command(node: &NodeSpec, p: &JoinParams, certificate_key: Option<&str>) -> String {
    let mut cmd = format!(
        "sudo kubeadm join {} --token {} --discovery-token-ca-cert-hash {} --node-name {}",
        p.endpoint, p.token, p.ca_cert_hash, node.name
    );
    if node.role == Role::ControlPlane {
        if let Some(key) = certificate_key {
            cmd.push_str(&format!(
                " --control-plane --certificate-key {key} --apiserver-advertise-address {}",
                node.ip
            ));
        }
    }
    cmd
}

/// `https://<ip>:6443`, the API endpoint of an instance whose first control plane is `ip`.
pub fn api_endpoint(first_control_plane: Ipv4Addr) -> String {
    format!("https://{first_control_plane}:6443")
}

// ---------------------------------------------------------------------------------------------
// The join flow, driving the nodes over `vagrant ssh`.
// ---------------------------------------------------------------------------------------------

impl VagrantBackend {
    /// `https://<cp-1 ip>:6443`, or with several control planes their virtual IP's.
    pub fn api_endpoint(spec: &LabSpec) -> Option<String> {
        crate::backend::api_address(&spec.subnet, &spec.nodes).map(api_endpoint)
    }

    pub(super) async fn run_join(
        &self,
        spec: &LabSpec,
        dir: &Path,
        limits: &Limits,
    ) -> Result<(), BackendError> {
        let Some(cp1) = render::first_control_plane(spec) else {
            return Ok(());
        };
        for node in spec.nodes.iter().filter(|n| n.name != cp1.name) {
            let joined = self
                .vagrant(
                    dir,
                    &[
                        "ssh",
                        &node.name,
                        "--no-tty",
                        "-c",
                        "test -f /etc/kubernetes/kubelet.conf",
                    ],
                    limits,
                    false,
                )
                .await?;
            if joined.status.success() {
                continue;
            }
            // Its output is the join command: the bootstrap token.
            let out = self
                .vagrant_secret(
                    dir,
                    &["ssh", &cp1.name, "--no-tty", "-c", "sudo kubeadm token create --print-join-command"],
                    limits,
                    &[],
                    true,
                )
                .await?
                .ok()?;
            let params = self::parse_join_command(&out.stdout).ok_or_else(|| {
                BackendError::Other(format!(
                    "{}: could not read the join command from `kubeadm token create --print-join-command` ({} lines of output, not shown: they may hold the bootstrap token)",
                    cp1.name,
                    out.stdout.lines().count()
                ))
            })?;
            let key = if node.role == Role::ControlPlane {
                // Its output is the certificate key.
                let out = self
                    .vagrant_secret(
                        dir,
                        &["ssh", &cp1.name, "--no-tty", "-c", "sudo kubeadm init phase upload-certs --upload-certs"],
                        limits,
                        &[],
                        true,
                    )
                    .await?
                    .ok()?;
                Some(
                    self::parse_certificate_key(&out.stdout).ok_or_else(|| {
                        BackendError::Other(format!(
                        "{}: no certificate key in the output of `kubeadm init phase upload-certs`",
                        cp1.name
                    ))
                    })?,
                )
            } else {
                None
            };
            let join = self::join_command(node, &params, key.as_deref());
            tracing::info!(node = %node.name, "joining the cluster");
            let mut secrets = vec![params.token.as_str()];
            secrets.extend(key.as_deref());
            self.vagrant_secret(dir, &["ssh", &node.name, "--no-tty", "-c", &join], limits, &secrets, false)
                .await?
                .ok()?;
        }
        // The cluster's admin credentials (client key included).
        let out = self
            .vagrant_secret(dir, &["ssh", &cp1.name, "--no-tty", "-c", "sudo cat /etc/kubernetes/admin.conf"], limits, &[], true)
            .await?
            .ok()?;
        if !out.stdout.contains("apiVersion:") {
            return Err(BackendError::Other(format!(
                "{}: /etc/kubernetes/admin.conf is not a kubeconfig (did `kubeadm init` run? see the control-plane provisioner's output); its {} lines are not shown (they may hold credentials)",
                cp1.name,
                out.stdout.lines().count()
            )));
        }
        write_private(&dir.join("kubeconfig"), &out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn join_command_is_parsed_and_rebuilt() {
        let out = format!("kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH} \n");
        let p = parse_join_command(&out).unwrap();
        assert_eq!(p.endpoint, "10.0.0.10:6443");
        let node = NodeSpec {
            name: "acme-cp-2".into(),
            role: Role::ControlPlane,
            ip: "10.0.0.11".parse().unwrap(),
        };
        let key = "a".repeat(64);
        let cmd = join_command(&node, &p, Some(&key));
        assert!(cmd.ends_with(&format!(
            "--control-plane --certificate-key {key} --apiserver-advertise-address 10.0.0.11"
        )));
    }

    #[test]
    fn hostile_join_output_is_refused() {
        let bad = [
            format!("kubeadm join 10.0.0.10:6443;reboot --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}"),
            format!("kubeadm join 10.0.0.10:6443 --token $(reboot).0123456789abcdef --discovery-token-ca-cert-hash {HASH}"),
            "kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:`x`".to_string(),
        ];
        for b in bad {
            assert!(parse_join_command(&b).is_none(), "{b}");
        }
    }

    #[test]
    fn certificate_key_is_the_last_hex_line() {
        let key = "0f".repeat(32);
        let out = format!("[upload-certs] Storing the certificates\n[upload-certs] Using certificate key:\n{key}\n");
        assert_eq!(parse_certificate_key(&out), Some(key));
        assert_eq!(parse_certificate_key("nothing"), None);
    }
}
