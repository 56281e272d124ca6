//! Vagrant option values (box, version, sizes, Kubernetes version) and VirtualBox's
//! networks.conf: accepted options always render a Vagrantfile and scripts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use homelab::backend::vagrant::render::{render_scripts, render_vagrantfile, RenderTarget};
use homelab::backend::vagrant::validate::{check_options, virtualbox_allowed_ranges};
use homelab::backend::vagrant::{Hypervisor, LibvirtDriver};
use homelab::backend::{plan_nodes, LabSpec, VagrantOptions};
use homelab::net;

fuzz_target!(|data: &[u8]| {
    let f: Vec<String> = data.split(|b| *b == 0xff).map(|x| String::from_utf8_lossy(x).into_owned()).collect();
    let field = |i: usize| f.get(i).cloned().unwrap_or_default();
    let number = |i: usize| f.get(i).map(|s| s.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))).unwrap_or(1);
    let _ = virtualbox_allowed_ranges(Some(&field(6)));
    let opts = VagrantOptions {
        r#box: field(0),
        box_version: f.get(1).filter(|s| !s.is_empty()).cloned(),
        cpus: number(2),
        memory_mb: number(3),
        kubernetes_version: field(4),
        provision: number(5) % 2 == 0,
    };
    if check_options(&opts).is_err() {
        return;
    }
    let subnet: net::Ipv4Net = "192.168.56.0/24".parse().unwrap();
    let spec = LabSpec {
        instance: "acme".into(),
        subnet,
        gateway: net::gateway(&subnet),
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        mgmt_cidr: Some("172.30.0.0/24".parse().unwrap()),
        nodes: plan_nodes("acme", &subnet, 1, 1).unwrap(),
        vagrant: Some(opts),
    };
    for hypervisor in [Hypervisor::VirtualBox, Hypervisor::Libvirt] {
        let target = RenderTarget { hypervisor, libvirt_driver: LibvirtDriver::Qemu };
        render_vagrantfile(&spec, target).expect("accepted options render");
    }
    render_scripts(&spec).expect("accepted options render scripts");
});
