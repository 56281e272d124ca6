//! What the release tests need around `scripts/release.sh`: a throw-away GPG key in a temporary
//! GNUPGHOME (its gpg-agent stopped by PID when dropped), a release cut into a temporary folder,
//! a CA and a server certificate for 127.0.0.1 made with `openssl`, a static HTTPS server on
//! loopback (tests/fixtures/https_mirror.py) stopped by PID when dropped, the files of a provider
//! registry serving a release, and the CLI configs of the README's install section.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::terraform::{repo_root, VERSION};

/// Run a command; panic with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Terraform's `h1:` hash of a package that unpacks to `files` (name, bytes): SHA-256 over the
/// lines `<sha256 hex>  <name>\n` in name order, base64 (Go's dirhash Hash1). Computed here
/// independently of scripts/pack_release.py.
pub fn h1(files: &[(&str, &[u8])]) -> String {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.0.cmp(b.0));
    let summary: String = files.iter().map(|(n, d)| format!("{}  {n}\n", sha256_hex(d))).collect();
    format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(summary.as_bytes())))
}

/// A GnuPG home with one throw-away RSA signing key (no passphrase; the registries take RSA). Dropping it stops the
/// gpg-agent that gpg started for this home (by its PID) and deletes the home.
pub struct Gpg {
    /// The GNUPGHOME.
    pub home: tempfile::TempDir,
    /// The key's fingerprint.
    pub fingerprint: String,
}

impl Gpg {
    /// A new home and RSA key.
    pub fn new() -> Gpg {
        Gpg::with_algorithm("rsa3072")
    }

    /// A new home and a key of `algorithm` (gpg's names: `rsa3072`, `ed25519`).
    pub fn with_algorithm(algorithm: &str) -> Gpg {
        // Short path: gpg-agent's socket lives in the home when /run/user/<uid> is missing.
        let home = tempfile::Builder::new().prefix("hlgpg").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut gpg = Gpg {
            home,
            fingerprint: String::new(),
        };
        run_ok(gpg.cmd("gpg").args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-generate-key",
            "homelab release test <release-test@homelab.invalid>",
            algorithm,
            "sign",
            "1d",
        ]));
        let out = run_ok(gpg.cmd("gpg").args(["--batch", "--with-colons", "--list-secret-keys"]));
        gpg.fingerprint = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_string()))
            .expect("the new key's fingerprint");
        gpg
    }

    /// The long key id (the fingerprint's last 16 hex digits).
    pub fn key_id(&self) -> String {
        self.fingerprint[self.fingerprint.len() - 16..].to_string()
    }

    /// A command with this home as GNUPGHOME.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("GNUPGHOME", self.home.path());
        c
    }

    /// `gpg --verify SIG FILE` with this home's key.
    pub fn verify(&self, sig: &Path, file: &Path) -> Output {
        self.cmd("gpg").args(["--batch", "--verify"]).arg(sig).arg(file).output().unwrap()
    }

    /// The PID of this home's running gpg-agent, if one runs.
    fn agent_pid(&self) -> Option<i32> {
        let out = self
            .cmd("gpg-connect-agent")
            .args(["--no-autostart", "getinfo pid", "/bye"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("D ")?.trim().parse().ok())
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        if let Some(pid) = self.agent_pid() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A release cut by `scripts/release.sh` into a temporary folder.
pub struct Release {
    /// OUTDIR.
    pub dir: tempfile::TempDir,
}

/// `scripts/release.sh OUTDIR` with the key of `gpg`.
pub fn release_sh(gpg: &Gpg, out: &Path) -> Output {
    let mut c = gpg.cmd("bash");
    c.arg(repo_root().join("scripts/release.sh"))
        .arg(out)
        .env("HOMELAB_RELEASE_GPG_KEY", &gpg.fingerprint)
        .env_remove("SOURCE_DATE_EPOCH");
    without_cargo_test_env(&mut c);
    c.output().unwrap()
}

/// Leave out the variables cargo sets for a test process (CARGO_MANIFEST_DIR, CARGO_PKG_NAME,
/// …): some build scripts rerun when they change, so a release build run from a test with them
/// would rebuild half the dependency tree, and the next build outside the tests again.
pub fn without_cargo_test_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR") || k == "OUT_DIR" {
            c.env_remove(k);
        }
    }
}

impl Release {
    /// Cut a release signed with `gpg`'s key.
    pub fn cut(gpg: &Gpg) -> Release {
        let dir = tempfile::Builder::new().prefix("homelab-release-").tempdir().unwrap();
        let out = release_sh(gpg, dir.path());
        assert!(
            out.status.success(),
            "scripts/release.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Release { dir }
    }

    /// A file of the release: `name("linux_amd64.zip")` is `terraform-provider-homelab_<V>_linux_amd64.zip`.
    pub fn file(&self, suffix: &str) -> PathBuf {
        self.dir.path().join(format!("terraform-provider-homelab_{VERSION}_{suffix}"))
    }

    /// OUTDIR/mirror.
    pub fn mirror(&self) -> PathBuf {
        self.dir.path().join("mirror")
    }

    /// The provider's folder in the mirror.
    pub fn mirror_provider_dir(&self) -> PathBuf {
        self.mirror().join("registry.terraform.io/homelab/homelab")
    }
}

/// The file name of the linux_amd64 zip.
pub fn zip_name() -> String {
    format!("terraform-provider-homelab_{VERSION}_linux_amd64.zip")
}

/// A CA and a certificate for 127.0.0.1 it signed, made with openssl for one test.
pub struct Tls {
    dir: tempfile::TempDir,
}

impl Tls {
    /// Make them.
    pub fn new() -> Tls {
        let dir = tempfile::Builder::new().prefix("homelab-tls-").tempdir().unwrap();
        let p = |f: &str| dir.path().join(f);
        let openssl = |args: &[&str]| run_ok(Command::new("openssl").args(args).current_dir(dir.path()));
        openssl(&[
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "1", "-subj", "/CN=homelab release test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        ]);
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "server.ext", "-out", "server.pem",
        ]);
        Tls { dir }
    }

    /// The CA certificate (PEM): what Terraform gets as SSL_CERT_FILE.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// tests/fixtures/https_mirror.py serving a folder on https://127.0.0.1:PORT/; stopped by PID
/// when dropped.
pub struct HttpsServer {
    child: Child,
    /// The port.
    pub port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl HttpsServer {
    /// Serve `root` with `tls`'s server certificate.
    pub fn start(root: &Path, tls: &Tls) -> HttpsServer {
        let log_dir = tempfile::Builder::new().prefix("homelab-https-").tempdir().unwrap();
        let log = log_dir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/fixtures/https_mirror.py"))
            .arg(root)
            .arg(tls.dir.path().join("server.pem"))
            .arg(tls.dir.path().join("server.key"))
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the HTTPS server did not say its port (said {line:?})");
            }
        };
        HttpsServer {
            child,
            port,
            log,
            _log_dir: log_dir,
        }
    }

    /// `https://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    /// The requests served so far, one `GET /path 200` a line.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        // Child::kill signals this child's own PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CLI config in the README's form: homelab/homelab from the network mirror at `url` only.
pub fn network_mirror_cli_config(dir: &Path, url: &str) -> PathBuf {
    mirror_cli_config(dir, &format!("network_mirror {{\n    url     = \"{url}\""))
}

/// A CLI config in the README's form: homelab/homelab from the filesystem mirror `path` only.
pub fn filesystem_mirror_cli_config(dir: &Path, path: &Path) -> PathBuf {
    mirror_cli_config(dir, &format!("filesystem_mirror {{\n    path    = \"{}\"", path.display()))
}

fn mirror_cli_config(dir: &Path, opening: &str) -> PathBuf {
    let p = dir.join("terraformrc");
    let provider = "registry.terraform.io/homelab/homelab";
    std::fs::write(
        &p,
        format!(
            "provider_installation {{\n  {opening}\n    include = [\"{provider}\"]\n  }}\n  direct {{\n    exclude = [\"{provider}\"]\n  }}\n}}\n"
        ),
    )
    .unwrap();
    p
}

/// The files of a provider registry (Terraform's provider registry protocol: service discovery,
/// `versions`, and the linux_amd64 `download` document naming the release's zip, SHA256SUMS,
/// its signature and `gpg`'s public key) for `rel`, under `root`, to be served at its base URL.
/// `sums` replaces the SHA256SUMS served, when given.
pub fn registry_tree(rel: &Release, gpg: &Gpg, root: &Path, sums: Option<&[u8]>) {
    let provider = root.join("v1/providers/homelab/homelab");
    let download = provider.join(format!("{VERSION}/download/linux"));
    std::fs::create_dir_all(root.join(".well-known")).unwrap();
    std::fs::create_dir_all(&download).unwrap();
    std::fs::write(root.join(".well-known/terraform.json"), r#"{"providers.v1":"/v1/providers/"}"#).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(rel.file("manifest.json")).unwrap()).unwrap();
    let protocols = manifest["metadata"]["protocol_versions"].clone();
    let versions = serde_json::json!({"versions": [{"version": VERSION, "protocols": protocols, "platforms": [{"os": "linux", "arch": "amd64"}]}]});
    std::fs::write(provider.join("versions"), versions.to_string()).unwrap();
    for f in ["linux_amd64.zip", "SHA256SUMS", "SHA256SUMS.sig"] {
        let name = format!("terraform-provider-homelab_{VERSION}_{f}");
        std::fs::copy(rel.file(f), download.join(&name)).unwrap();
    }
    if let Some(sums) = sums {
        std::fs::write(download.join(format!("terraform-provider-homelab_{VERSION}_SHA256SUMS")), sums).unwrap();
    }
    let armor = run_ok(gpg.cmd("gpg").args(["--batch", "--armor", "--export", &gpg.fingerprint]));
    let zip = std::fs::read(rel.file("linux_amd64.zip")).unwrap();
    let doc = serde_json::json!({
        "protocols": protocols,
        "os": "linux",
        "arch": "amd64",
        "filename": zip_name(),
        "download_url": zip_name(),
        "shasums_url": format!("terraform-provider-homelab_{VERSION}_SHA256SUMS"),
        "shasums_signature_url": format!("terraform-provider-homelab_{VERSION}_SHA256SUMS.sig"),
        "shasum": sha256_hex(&zip),
        "signing_keys": {"gpg_public_keys": [{
            "key_id": gpg.key_id(),
            "ascii_armor": String::from_utf8_lossy(&armor.stdout),
        }]},
    });
    std::fs::write(download.join("amd64"), doc.to_string()).unwrap();
}
