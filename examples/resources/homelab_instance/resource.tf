# A lab on network namespaces: networks allocated from the pools and shown at plan; each node
# carries two pods addressed from its slice of the pod CIDR (`nodes[*].pod_cidr`, `nodes[*].pods`).
resource "homelab_instance" "acme" {
  name          = "acme"
  backend       = "netns"
  workers       = 2
  pods_per_node = 2
}

# A lab of VMs on libvirt, with pinned networks (checked at plan against everything else).
resource "homelab_instance" "globex" {
  name           = "globex"
  backend        = "vagrant"
  control_planes = 1
  workers        = 1
  subnet         = "192.168.58.0/24"
  pod_cidr       = "10.246.0.0/16"
  service_cidr   = "10.98.0.0/16"
  memory_mb      = 4096

  timeouts {
    create = "45m"
  }
}
