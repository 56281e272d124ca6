# Quickstart: three isolated client labs on network namespaces.
# Each gets its own /24, pod CIDR and service CIDR, all disjoint; nothing routes between them.
terraform {
  required_providers {
    homelab = {
      source = "homelab/homelab"
    }
  }
}

provider "homelab" {
  default_backend = "netns"
}

resource "homelab_instance" "client" {
  for_each = toset(["acme", "globex", "initech"])

  name    = each.key
  workers = 1
}

output "instances" {
  description = "Networks and nodes of each instance."
  value = {
    for name, i in homelab_instance.client : name => {
      subnet       = i.subnet
      gateway      = i.gateway
      pod_cidr     = i.pod_cidr
      service_cidr = i.service_cidr
      nodes        = { for n in i.nodes : n.name => n.ip }
    }
  }
}
