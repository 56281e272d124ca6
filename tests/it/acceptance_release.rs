//! Releases that `terraform init` installs, through the real Terraform CLI: `scripts/release.sh`
//! cuts a release signed with a throw-away key; its `mirror/` is served over HTTPS on loopback
//! (a CA made for the test, handed to Terraform as SSL_CERT_FILE) as a `network_mirror`;
//! `terraform init` installs the provider from it, `providers lock -net-mirror` records its
//! hashes, a second init in a fresh folder verifies them, tampered zips are refused with
//! Terraform's checksum errors, and the quickstart configuration applies with the installed
//! provider. Without Terraform: the artifacts' names and contents, the signature (good, and
//! bad on a changed SHA256SUMS), two runs giving the same bytes, and the version everywhere.
//!
//! Nothing leaves the machine: the server listens on 127.0.0.1 only and is stopped by PID, and
//! the CLI configs (the README's) take homelab/homelab from that mirror only, and the
//! configurations need no other provider.

use std::path::Path;

use crate::acceptance;
use crate::util::lab::Lab;
use crate::util::release::{
    filesystem_mirror_cli_config, h1, network_mirror_cli_config, registry_tree, run_ok, sha256_hex, zip_name, Gpg, HttpsServer, Release, Tls,
};
use crate::util::terraform::{repo_root, Run, Workdir, VERSION};

const PROVIDER: &str = "registry.terraform.io/homelab/homelab";

fn entry_name() -> String {
    format!("terraform-provider-homelab_v{VERSION}")
}

/// The release binary the release was packed from.
fn release_binary() -> Vec<u8> {
    std::fs::read(repo_root().join("target/release/terraform-provider-homelab")).unwrap()
}

/// examples/quickstart/main.tf with its provider block replaced by `lab`'s (its own registry
/// home and lab host), without its `terraform` block (the Workdir adds the same one), and on
/// Terraform before 1.5 without its check block.
fn quickstart_with(lab: &Lab) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart/main.tf")).unwrap();
    let at = text.find("resource \"homelab_instance\"").expect("the quickstart declares instances");
    let (head, body) = text.split_at(at);
    // The test swaps exactly this block: a quickstart with more provider settings needs them here too.
    assert!(
        head.contains("provider \"homelab\" {\n  default_backend = \"netns\"\n}\n"),
        "the quickstart's provider block changed; update this test:\n{head}"
    );
    let text = format!("{}{body}", lab.provider(""));
    // Its check block needs Terraform 1.5+.
    if lab.tf.at_least(1, 5) {
        text
    } else {
        crate::util::terraform::without_check_blocks(&text)
    }
}

/// A Terraform folder for the quickstart whose only installation method is the network mirror at
/// `url`, trusting `tls`'s CA.
fn workdir(lab: &Lab, rc_dir: &Path, url: &str, tls: &Tls) -> Workdir {
    let mut w = Workdir::new(lab.tf, &quickstart_with(lab));
    let rc = network_mirror_cli_config(rc_dir, url);
    w.env.push(("TF_CLI_CONFIG_FILE".into(), rc.display().to_string()));
    w.env.push(("SSL_CERT_FILE".into(), tls.ca().display().to_string()));
    w
}

fn lock_file(w: &Workdir) -> String {
    std::fs::read_to_string(w.path().join(".terraform.lock.hcl")).unwrap_or_default()
}

/// The `hashes` of the provider's entry in a lock file, sorted.
fn locked_hashes(lock: &str) -> Vec<String> {
    let mut v: Vec<String> = lock
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix('"')?.strip_suffix("\",").map(str::to_string))
        .filter(|h| h.starts_with("h1:") || h.starts_with("zh:"))
        .collect();
    v.sort();
    v
}

fn assert_refused(r: Run, message: &str) {
    let r = r.failed();
    assert!(r.flat().contains(message), "expected Terraform's \"{message}\":\n{}", r.all());
}

/// A copy of the release's mirror under `root/name` with its zip replaced by `zip`; with
/// `rehash`, its `<version>.json` lists the new zip's hash (a mirror that was taken over).
fn tampered_mirror(rel: &Release, root: &Path, name: &str, zip: &[u8], rehash: bool) {
    let dir = root.join(name).join(PROVIDER);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["index.json", &format!("{VERSION}.json")] {
        std::fs::copy(rel.mirror_provider_dir().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join(zip_name()), zip).unwrap();
    if rehash {
        let doc = serde_json::json!({"archives": {"linux_amd64": {"url": zip_name(), "hashes": [format!("zh:{}", sha256_hex(zip))]}}});
        std::fs::write(dir.join(format!("{VERSION}.json")), doc.to_string()).unwrap();
    }
}

/// A zip holding `binary` under the provider's entry name (made by python3's zipfile, as
/// someone repacking a changed binary would).
fn zip_of(binary: &[u8], dir: &Path) -> Vec<u8> {
    let bin = dir.join("changed-binary");
    let zip = dir.join("changed.zip");
    std::fs::write(&bin, binary).unwrap();
    run_ok(std::process::Command::new("python3").args([
        "-c",
        "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[1], sys.argv[3])",
        &bin.display().to_string(),
        &zip.display().to_string(),
        &entry_name(),
    ]));
    std::fs::read(zip).unwrap()
}

acceptance! {
/// The release's mirror, served over HTTPS on loopback, installs the provider; the lock records
/// its hashes and protects a fresh folder from tampered zips; the quickstart applies with it.
fn release_mirror_over_https_installs_locks_and_refuses_tampered_zips(tf: Tf) {
    let gpg = Gpg::new();
    let rel = Release::cut(&gpg);
    let zip = std::fs::read(rel.file("linux_amd64.zip")).unwrap();
    let binary = release_binary();
    let expected_h1 = h1(&[(&entry_name(), &binary)]);
    let expected_zh = format!("zh:{}", sha256_hex(&zip));

    // Served: the good mirror at /good/, the tampered ones next to it.
    let root = tempfile::Builder::new().prefix("homelab-served-").tempdir().unwrap();
    std::os::unix::fs::symlink(rel.mirror(), root.path().join("good")).unwrap();
    let mut flipped = zip.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    tampered_mirror(&rel, root.path(), "flipped", &flipped, false);
    let mut changed = binary.clone();
    let mid = changed.len() / 2;
    changed[mid] ^= 0x01;
    let changed_zip = zip_of(&changed, root.path());
    tampered_mirror(&rel, root.path(), "changed", &changed_zip, false);
    tampered_mirror(&rel, root.path(), "taken-over", &changed_zip, true);
    let tls = Tls::new();
    let server = HttpsServer::start(root.path(), &tls);
    let good = server.url("good/");
    let lab = Lab::new(tf);
    let rcs = tempfile::tempdir().unwrap();
    let rc_dir = |name: &str| {
        let d = rcs.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // Step 1: without the test's CA, Terraform does not trust the server (the TLS is real).
    let mut w = workdir(&lab, &rc_dir("untrusted"), &good, &tls);
    w.env.retain(|(k, _)| k != "SSL_CERT_FILE");
    assert_refused(w.tf(&["init"]), "x509");

    // Step 2: init through the network mirror installs the provider and locks its h1: hash.
    let w1 = workdir(&lab, &rc_dir("w1"), &good, &tls);
    let r = w1.init();
    assert!(r.flat().contains(&format!("Installed homelab/homelab v{VERSION}")), "{}", r.all());
    let served = server.requests();
    for path in ["index.json".to_string(), format!("{VERSION}.json"), zip_name()] {
        assert!(served.contains(&format!("GET /good/{PROVIDER}/{path} 200")), "{path} was not fetched from the mirror:\n{served}");
    }
    assert_eq!(locked_hashes(&lock_file(&w1)), vec![expected_h1.clone()], "{}", lock_file(&w1));

    // Step 3: `providers lock -net-mirror` in a fresh folder records the same hash. (Terraform
    // records zh: hashes only from a registry's signed SHA256SUMS, never from a mirror.)
    let w2 = workdir(&lab, &rc_dir("w2"), &good, &tls);
    w2.tf(&["providers", "lock", &format!("-net-mirror={good}"), "-platform=linux_amd64"]).ok();
    let lock = lock_file(&w2);
    assert!(lock.contains(&format!("provider \"{PROVIDER}\"")) && lock.contains(&format!("version = \"{VERSION}\"")), "{lock}");
    assert_eq!(locked_hashes(&lock), vec![expected_h1.clone()], "{lock}");
    // A second init, in a fresh folder holding that lock file, verifies the package against it.
    let w2b = workdir(&lab, &rc_dir("w2b"), &good, &tls);
    std::fs::write(w2b.path().join(".terraform.lock.hcl"), &lock).unwrap();
    let r = w2b.init();
    assert!(r.flat().contains("Reusing previous version of homelab/homelab from the dependency lock file"), "{}", r.all());
    assert_eq!(locked_hashes(&lock_file(&w2b)), vec![expected_h1.clone()]);

    // Step 4: the lock file scripts/quickstart.sh writes (lib.sh's write_release_lock: the
    // release's published h1: and zh: hashes, from <version>.json) is verified by init in a
    // fresh folder and kept whole.
    let published: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rel.mirror_provider_dir().join(format!("{VERSION}.json"))).unwrap()).unwrap();
    let mut hashes: Vec<String> = published["archives"]["linux_amd64"]["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    hashes.sort();
    let mut both = vec![expected_h1.clone(), expected_zh.clone()];
    both.sort();
    assert_eq!(hashes, both);
    let w3 = workdir(&lab, &rc_dir("w3"), &good, &tls);
    run_ok(
        std::process::Command::new("bash")
            .args(["-c", "source \"$1/scripts/lib.sh\" && RELEASE=\"$2\" && write_release_lock \"$3\"", "-"])
            .arg(repo_root())
            .arg(rel.dir.path())
            .arg(w3.path()),
    );
    let full_lock = lock_file(&w3);
    assert_eq!(locked_hashes(&full_lock), both, "{full_lock}");
    w3.init();
    assert_eq!(locked_hashes(&lock_file(&w3)), both, "{}", lock_file(&w3));
    // The same from the mirror folder used as a filesystem mirror (packed layout), as
    // scripts/quickstart.sh installs it.
    let mut fs = Workdir::new(tf, &quickstart_with(&lab));
    let fs_rc = filesystem_mirror_cli_config(&rc_dir("fs"), &rel.mirror());
    fs.env.push(("TF_CLI_CONFIG_FILE".into(), fs_rc.display().to_string()));
    std::fs::write(fs.path().join(".terraform.lock.hcl"), &full_lock).unwrap();
    let r = fs.init();
    assert!(r.flat().contains(&format!("Installed homelab/homelab v{VERSION}")), "{}", r.all());
    assert_eq!(locked_hashes(&lock_file(&fs)), both, "{}", lock_file(&fs));

    // Step 5: a zip with one byte changed, its mirror's hashes as published: refused.
    let w4 = workdir(&lab, &rc_dir("w4"), &server.url("flipped/"), &tls);
    assert_refused(w4.tf(&["init"]), "failed to verify provider package checksums");
    // The binary with one byte changed, zipped again: refused by the mirror's hashes.
    let w5 = workdir(&lab, &rc_dir("w5"), &server.url("changed/"), &tls);
    assert_refused(w5.tf(&["init"]), "doesn't match the any of the expected checksums");
    // The same zip from a mirror whose hashes were changed to match it: without a lock file
    // init takes it; with the lock file of step 3, init refuses it.
    let w6 = workdir(&lab, &rc_dir("w6"), &server.url("taken-over/"), &tls);
    w6.init();
    let w7 = workdir(&lab, &rc_dir("w7"), &server.url("taken-over/"), &tls);
    std::fs::write(w7.path().join(".terraform.lock.hcl"), &lock).unwrap();
    assert_refused(
        w7.tf(&["init"]),
        "doesn't match any of the checksums previously recorded in the dependency lock file",
    );
    drop(server);

    // Step 6: the quickstart configuration applies with the provider installed and verified in
    // step 4: three labs, each with its own subnet; then destroy.
    w3.apply().ok();
    let out = w3.outputs();
    let instances = out["instances"]["value"].as_object().expect("instances output").clone();
    let mut names: Vec<&String> = instances.keys().collect();
    names.sort();
    assert_eq!(names, ["acme", "globex", "initech"]);
    let mut subnets: Vec<&str> = instances.values().map(|i| i["subnet"].as_str().unwrap()).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "{out}");
    w3.destroy().ok();
}
}

acceptance! {
/// The release, served the way a registry serves it (provider registry protocol, over HTTPS on
/// loopback), installs with Terraform checking SHA256SUMS's signature against the release key
/// itself; the lock records the zip's zh: hash and the h1: hash; a changed SHA256SUMS is refused.
fn release_installs_from_a_registry_that_checks_its_signature(tf: Tf) {
    let gpg = Gpg::new();
    let rel = Release::cut(&gpg);
    let zip = std::fs::read(rel.file("linux_amd64.zip")).unwrap();
    let root = tempfile::Builder::new().prefix("homelab-registry-").tempdir().unwrap();
    registry_tree(&rel, &gpg, &root.path().join("good"), None);
    let mut sums = std::fs::read(rel.file("SHA256SUMS")).unwrap();
    let last = sums.len() - 2; // a hex digit of the manifest's line
    sums[last] = if sums[last] == b'0' { b'1' } else { b'0' };
    registry_tree(&rel, &gpg, &root.path().join("changed"), Some(&sums));
    let tls = Tls::new();
    // The registry's host is the source address's: one server per tree, each at its root.
    let good = HttpsServer::start(&root.path().join("good"), &tls);
    let changed = HttpsServer::start(&root.path().join("changed"), &tls);
    let rcs = tempfile::tempdir().unwrap();
    let rc = rcs.path().join("terraformrc");
    std::fs::write(&rc, "provider_installation {\n  direct {}\n}\n").unwrap();
    let at = |server: &HttpsServer| {
        let w = Workdir::new(tf, "");
        let host = format!("127.0.0.1:{}", server.port);
        std::fs::write(
            w.path().join("main.tf"),
            format!("terraform {{\n  required_providers {{\n    homelab = {{\n      source  = \"{host}/homelab/homelab\"\n      version = \"{VERSION}\"\n    }}\n  }}\n}}\n"),
        )
        .unwrap();
        let mut w = w;
        w.env.push(("TF_CLI_CONFIG_FILE".into(), rc.display().to_string()));
        w.env.push(("SSL_CERT_FILE".into(), tls.ca().display().to_string()));
        (w, host)
    };

    // Step 1: init installs it, naming the key that signed it.
    let (w, host) = at(&good);
    let r = w.init();
    assert!(r.flat().contains(&format!("Installed {host}/homelab/homelab v{VERSION}")), "{}", r.all());
    assert!(r.flat().contains(&format!("key ID {}", gpg.key_id())), "{}", r.all());
    let served = good.requests();
    assert!(served.contains(&format!("GET /v1/providers/homelab/homelab/{VERSION}/download/linux/terraform-provider-homelab_{VERSION}_SHA256SUMS.sig 200")), "{served}");
    // Step 2: the lock holds the zip's zh: hash (from the signed SHA256SUMS) and the h1: hash.
    let lock = lock_file(&w);
    let hashes = locked_hashes(&lock);
    assert!(hashes.contains(&format!("zh:{}", sha256_hex(&zip))), "{lock}");
    assert!(hashes.contains(&h1(&[(&entry_name(), &release_binary())])), "{lock}");
    // Step 3: a SHA256SUMS changed after signing is refused.
    let (w, _) = at(&changed);
    let r = w.tf(&["init"]).failed();
    assert!(r.flat().contains("error checking signature"), "expected Terraform's signature error:\n{}", r.all());
}
}

/// What `unzip` says of the zip's entries: (name, mode, date, data).
fn zip_entries(zip: &Path) -> Vec<(String, u32, String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(std::process::Command::new("python3").args([
        "-c",
        "import json, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor i in z.infolist():\n    p = sys.argv[2] + '/' + str(len(i.filename))\n    open(p, 'wb').write(z.read(i))\n    print(json.dumps([i.filename, i.external_attr >> 16, '%04d-%02d-%02dT%02d:%02d:%02d' % i.date_time, p]))",
        &zip.display().to_string(),
        &dir.path().display().to_string(),
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v[0].as_str().unwrap().to_string(),
                v[1].as_u64().unwrap() as u32,
                v[2].as_str().unwrap().to_string(),
                std::fs::read(v[3].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Every file under `dir`, relative, with its bytes, in name order.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((p.strip_prefix(base).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The artifacts are the registry's names and contents, the signature verifies (and fails on
/// a changed SHA256SUMS), and a second run gives the same bytes.
#[test]
fn release_artifacts_are_complete_signed_and_reproducible() {
    let gpg = Gpg::new();
    let a = Release::cut(&gpg);
    let binary = release_binary();

    // Exactly the registry's files, and the mirror.
    let names: Vec<String> = tree(a.dir.path()).into_iter().map(|(n, _)| n).collect();
    let p = |s: &str| format!("terraform-provider-homelab_{VERSION}_{s}");
    let mut expected = vec![
        p("SHA256SUMS"),
        p("SHA256SUMS.sig"),
        p("linux_amd64.zip"),
        p("manifest.json"),
        format!("mirror/{PROVIDER}/{VERSION}.json"),
        format!("mirror/{PROVIDER}/index.json"),
        format!("mirror/{PROVIDER}/{}", zip_name()),
    ];
    expected.sort();
    assert_eq!(names, expected);

    // The zip: one executable entry, the release binary, dated at the commit.
    let zip = std::fs::read(a.file("linux_amd64.zip")).unwrap();
    let entries = zip_entries(&a.file("linux_amd64.zip"));
    assert_eq!(entries.len(), 1);
    let (name, mode, date, data) = &entries[0];
    assert_eq!(name, &entry_name());
    assert_eq!(*mode, 0o100755, "mode {mode:o}");
    assert!(data == &binary, "the zip does not hold target/release/terraform-provider-homelab");
    let commit_time = run_ok(std::process::Command::new("git").args(["log", "-1", "--format=%cd", "--date=format-local:%Y-%m-%dT%H:%M:%S"]).env("TZ", "UTC").current_dir(repo_root()));
    let commit_time = String::from_utf8_lossy(&commit_time.stdout).trim().to_string();
    // Zip times have a resolution of two seconds.
    assert_eq!(date[..17], commit_time[..17], "zip entry dated {date}, commit {commit_time}");
    let unpacked = tempfile::tempdir().unwrap();
    let bin = unpacked.path().join(entry_name());
    std::fs::write(&bin, data).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let v = run_ok(std::process::Command::new(&bin).arg("--version"));
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("terraform-provider-homelab {VERSION}"));

    // The manifest is terraform-registry-manifest.json; SHA256SUMS lists the zip and it.
    let manifest = std::fs::read(a.file("manifest.json")).unwrap();
    assert_eq!(manifest, std::fs::read(repo_root().join("terraform-registry-manifest.json")).unwrap());
    let sums = std::fs::read_to_string(a.file("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!("{}  {}\n{}  {}\n", sha256_hex(&zip), zip_name(), sha256_hex(&manifest), p("manifest.json"))
    );

    // The mirror: the version listed, the archive by relative URL with its h1: and zh: hashes.
    let read_json = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(a.mirror_provider_dir().join(f)).unwrap()).unwrap()
    };
    assert_eq!(read_json("index.json"), serde_json::json!({"versions": {VERSION: {}}}));
    assert_eq!(
        read_json(&format!("{VERSION}.json")),
        serde_json::json!({"archives": {"linux_amd64": {
            "url": zip_name(),
            "hashes": [h1(&[(&entry_name(), &binary)]), format!("zh:{}", sha256_hex(&zip))],
        }}})
    );
    assert!(std::fs::read(a.mirror_provider_dir().join(zip_name())).unwrap() == zip);

    // The detached signature verifies with the key, and not once SHA256SUMS is changed.
    let sig = a.file("SHA256SUMS.sig");
    let ok = gpg.verify(&sig, &a.file("SHA256SUMS"));
    assert!(ok.status.success(), "gpg --verify failed:\n{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stderr).contains("Good signature"), "{}", String::from_utf8_lossy(&ok.stderr));
    let scratch = tempfile::tempdir().unwrap();
    let changed = scratch.path().join("changed-SHA256SUMS");
    let mut bytes = sums.into_bytes();
    bytes[0] = if bytes[0] == b'0' { b'1' } else { b'0' };
    std::fs::write(&changed, bytes).unwrap();
    let bad = gpg.verify(&sig, &changed);
    assert!(!bad.status.success(), "gpg --verify passed on a changed SHA256SUMS");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("BAD signature"), "{}", String::from_utf8_lossy(&bad.stderr));

    // A second run gives the same bytes (the signature aside: it carries its own time).
    let b = Release::cut(&gpg);
    let strip = |t: Vec<(String, Vec<u8>)>| t.into_iter().filter(|(n, _)| !n.ends_with(".sig")).collect::<Vec<_>>();
    let (ta, tb) = (strip(tree(a.dir.path())), strip(tree(b.dir.path())));
    assert_eq!(ta.len(), tb.len());
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs between two runs of scripts/release.sh");
    }
    let sig_b = b.file("SHA256SUMS.sig");
    assert!(gpg.verify(&sig_b, &b.file("SHA256SUMS")).status.success());
}

/// Without a key to sign with, release.sh stops before building, saying how to give one.
#[test]
fn release_without_a_signing_key_is_refused() {
    let empty = tempfile::Builder::new().prefix("hlgpg").tempdir_in("/tmp").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .arg(out_dir.path().join("out"))
        .env("GNUPGHOME", empty.path())
        .env_remove("HOMELAB_RELEASE_GPG_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no GPG secret key") && err.contains("HOMELAB_RELEASE_GPG_KEY"), "{err}");
    assert!(!out_dir.path().join("out").exists(), "release.sh wrote into OUTDIR before failing");
}

/// An ed25519 key is refused (Terraform 1.0.3 cannot check its signatures), and no signature
/// of it is left in OUTDIR.
#[test]
fn release_with_an_ed25519_key_is_refused() {
    let gpg = Gpg::with_algorithm("ed25519");
    let out = tempfile::tempdir().unwrap();
    let r = crate::util::release::release_sh(&gpg, out.path());
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("not RSA or DSA") && err.contains("rsa4096"), "{err}");
    assert!(!out.path().join(format!("terraform-provider-homelab_{VERSION}_SHA256SUMS.sig")).exists());
}

/// The version is Cargo.toml's everywhere a user reads it: the binary, CHANGELOG.md's newest
/// release, the README's install example, and the provider example of the docs.
#[test]
fn version_is_cargo_toml_s_everywhere() {
    let v = run_ok(std::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-homelab")).arg("--version"));
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("terraform-provider-homelab {VERSION}"));
    let changelog = std::fs::read_to_string(repo_root().join("CHANGELOG.md")).unwrap();
    let newest = changelog
        .lines()
        .find(|l| l.starts_with("## [") && !l.starts_with("## [Unreleased]"))
        .expect("a released version in CHANGELOG.md");
    assert!(newest.starts_with(&format!("## [{VERSION}] - ")), "CHANGELOG.md's newest release is {newest:?}, Cargo.toml says {VERSION}");
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(readme.contains(&format!("version = \"{VERSION}\"")), "the README's install example does not pin {VERSION}");
    assert!(readme.contains(&format!("terraform-provider-homelab_{VERSION}_linux_amd64.zip")), "the README does not name this version's zip");
    // docs/index.md shows this example (the docs test keeps them equal).
    let example = std::fs::read_to_string(repo_root().join("examples/provider/provider.tf")).unwrap();
    assert!(example.contains(&format!("version = \"{VERSION}\"")), "examples/provider/provider.tf does not pin {VERSION}");
}

/// A second release into the same OUTDIR keeps the versions its mirror already lists.
#[test]
fn mirror_index_keeps_earlier_versions() {
    let out = tempfile::tempdir().unwrap();
    let bin = out.path().join("bin");
    std::fs::write(&bin, b"not really a provider").unwrap();
    let pack = |version: &str| {
        run_ok(std::process::Command::new("python3").arg(repo_root().join("scripts/pack_release.py")).args([
            "--binary",
            &bin.display().to_string(),
            "--version",
            version,
            "--manifest",
            &repo_root().join("terraform-registry-manifest.json").display().to_string(),
            "--epoch",
            "1796147954",
            "--out",
            &out.path().display().to_string(),
        ]));
    };
    pack("0.0.9");
    pack("0.1.0");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("mirror").join(PROVIDER).join("index.json")).unwrap()).unwrap();
    assert_eq!(index, serde_json::json!({"versions": {"0.0.9": {}, "0.1.0": {}}}));
}
