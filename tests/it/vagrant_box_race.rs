//! First-time `vagrant up`s of one box racing on a fresh libvirtd (real Vagrant, real
//! vagrant-libvirt, real libvirtd in a lab of the test's own), through the `Backend` trait:
//! three instances converge at once, as Terraform applies them. vagrant-libvirt uploads the
//! box into the storage pool once, as a base volume, and puts each machine's disk on it as a
//! qcow2 overlay. No machine may get its overlay before that upload is over: a guest on a
//! half-written base volume reads holes ("I/O error, dev vda … error loading journal").
//!
//! Fast, without booting: once every machine is past making its disk, the ups are stopped.
//! From the lines Vagrant printed (with the time they came): exactly one up uploads, and every
//! other up makes its overlay only after the uploader made its own (the uploader makes its
//! overlay right after its upload). Then the base volume is checked with `qemu-img check` and
//! compared byte for byte with the box's image, and so is every overlay left. Three rounds,
//! each on a fresh libvirtd.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homelab::backend::vagrant::VagrantBackend;
use homelab::backend::{Backend, OpControl};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::util::vagrant::{test_options, vagrant_spec};
use crate::util::vm::{text, VmLab, TEST_BOX};

/// Every line a `vagrant up` printed, with when it came.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<(Instant, String)>>>);

struct Message(String, bool);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.0 = format!("{value:?}"),
            "command" => self.1 = format!("{value:?}").contains("vagrant up"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Message(String::new(), false);
        event.record(&mut m);
        if m.1 {
            self.0.lock().unwrap().push((Instant::now(), m.0));
        }
    }
}

impl Lines {
    /// When `machine` first printed a line containing `what`.
    fn first(&self, machine: &str, what: &str) -> Option<Instant> {
        let lines = self.0.lock().unwrap();
        lines.iter().find(|(_, l)| l.contains(machine) && l.contains(what)).map(|(t, _)| *t)
    }
}

const UPLOADING: &str = "Uploading base box image as volume";
const OVERLAY: &str = "Creating image (snapshot of base box volume)";

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn vagrant_vms_first_ups_of_one_box_never_share_a_half_written_base_volume() {
    let names = ["acme", "globex", "initech"];
    for round in 0..3 {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        let _log = tracing::subscriber::set_default(subscriber);
        let lab = VmLab::start();
        let backend = VagrantBackend::new(lab.backend_config());
        let specs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| vagrant_spec(n, &format!("10.77.{}.0/24", i + 1), &format!("10.78.{}.0/24", i + 1), 1, 0, test_options(TEST_BOX, false)))
            .collect();
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        let up = |i: usize| {
            let ctl = OpControl { timeout: Duration::from_secs(420), cancel: cancel.clone() };
            let (backend, spec) = (&backend, &specs[i]);
            async move { backend.converge(spec, &ctl).await }
        };
        // Stop the ups once every machine is past making its disk (or after 5 minutes).
        let watch = async {
            while t0.elapsed() < Duration::from_secs(300) {
                let done = names.iter().all(|n| lines.first(&format!("{n}-cp-1"), OVERLAY).is_some());
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            cancel.cancel();
        };
        let (a, b, c, ()) = tokio::join!(up(0), up(1), up(2), watch);
        let results = [a, b, c];
        eprintln!("round {round}: ups stopped after {:.1}s", t0.elapsed().as_secs_f64());
        // The timeline, for whoever reads a failure.
        for n in names {
            let m = format!("{n}-cp-1");
            let at = |what: &str| lines.first(&m, what).map(|t| format!("{:6.2}s", (t - t0).as_secs_f64())).unwrap_or_else(|| "     -".into());
            eprintln!("  {m:<12} upload {}  overlay {}  domain {}", at(UPLOADING), at(OVERLAY), at("Creating domain with the following settings"));
        }
        let made: Vec<_> = names.iter().map(|n| (n, lines.first(&format!("{n}-cp-1"), OVERLAY))).collect();
        for ((n, t), r) in made.iter().zip(&results) {
            assert!(t.is_some(), "round {round}: {n} never made its disk ({r:?})");
        }
        let uploaders: Vec<&&str> = names.iter().filter(|n| lines.first(&format!("{n}-cp-1"), UPLOADING).is_some()).collect();
        assert_eq!(uploaders.len(), 1, "round {round}: uploads by {uploaders:?}");
        let uploaded_at = lines.first(&format!("{}-cp-1", uploaders[0]), OVERLAY).unwrap();
        for (n, t) in &made {
            let t = t.unwrap();
            assert!(
                t >= uploaded_at,
                "round {round}: {n} made its overlay {:.2}s before {}'s upload of the base volume was over",
                (uploaded_at - t).as_secs_f64(),
                uploaders[0]
            );
        }
        // Machines a stopped up had already started are powered off before their disks are
        // read.
        for d in lab.domains() {
            let _ = lab.run(&["virsh", "-q", "-c", "qemu:///system", "destroy", &d], Duration::from_secs(60));
        }
        // The base volume is whole: it checks, and holds exactly the box's image.
        let images = lab.state.join("lib/images");
        let files: Vec<_> = std::fs::read_dir(&images).unwrap().flatten().map(|e| e.path()).collect();
        let base: Vec<_> = files.iter().filter(|p| p.to_string_lossy().contains("_vagrant_box_image_")).collect();
        assert_eq!(base.len(), 1, "round {round}: {files:?}");
        let box_img = walk(&lab.vagrant_home.join("boxes")).into_iter().find(|p| p.ends_with("box.img")).expect("the box's image");
        assert_eq!(sha256(base[0]), sha256(&box_img), "round {round}: the base volume differs from the box's image");
        // Inside the lab, where an overlay's backing file (recorded as libvirt's path,
        // /var/lib/libvirt/images/…) resolves: an overlay that a stopped up left behind (its
        // Vagrant did not get to delete it) is checked along with its base.
        for f in &files {
            let inside = format!("/var/lib/libvirt/images/{}", f.file_name().unwrap().to_string_lossy());
            let out = lab.run(&["qemu-img", "check", "-q", &inside], Duration::from_secs(120));
            assert!(out.status.success(), "round {round}: qemu-img check {}: {}", f.display(), text(&out));
        }
        drop(lab);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
