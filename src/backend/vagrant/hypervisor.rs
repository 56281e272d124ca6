//! Which virtualization the Vagrant backend drives: the hypervisor (VirtualBox or libvirt) and
//! libvirt's domain type (KVM, or QEMU software emulation), with their names in settings.

/// Where the VMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Hypervisor {
    /// VirtualBox (host-only networks on vboxnet interfaces).
    #[default]
    VirtualBox,
    /// libvirt through the vagrant-libvirt plugin.
    Libvirt,
}

impl Hypervisor {
    /// `virtualbox` / `libvirt`: the attribute value and Vagrant's provider name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Hypervisor::VirtualBox => "virtualbox",
            Hypervisor::Libvirt => "libvirt",
        }
    }

    /// Parse `virtualbox` / `libvirt`.
    pub fn parse(text: &str) -> Option<Hypervisor> {
        match text {
            "virtualbox" => Some(Hypervisor::VirtualBox),
            "libvirt" => Some(Hypervisor::Libvirt),
            _ => None,
        }
    }
}

/// libvirt's domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LibvirtDriver {
    /// Hardware virtualisation.
    #[default]
    Kvm,
    /// Software emulation (TCG), for hosts whose KVM cannot boot a stock kernel.
    Qemu,
}

impl LibvirtDriver {
    /// `kvm` / `qemu`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LibvirtDriver::Kvm => "kvm",
            LibvirtDriver::Qemu => "qemu",
        }
    }

    /// Parse `kvm` / `qemu`.
    pub fn parse(text: &str) -> Option<LibvirtDriver> {
        match text {
            "kvm" => Some(LibvirtDriver::Kvm),
            "qemu" => Some(LibvirtDriver::Qemu),
            _ => None,
        }
    }
}
