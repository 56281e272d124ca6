# What "acme" has, or would get if it were planned now, and how full the pools are.
data "homelab_cidr_allocation" "acme" {
  name = "acme"
}

output "acme" {
  value = {
    status       = data.homelab_cidr_allocation.acme.status
    subnet       = data.homelab_cidr_allocation.acme.subnet
    gateway      = data.homelab_cidr_allocation.acme.gateway
    pod_cidr     = data.homelab_cidr_allocation.acme.pod_cidr
    service_cidr = data.homelab_cidr_allocation.acme.service_cidr
  }
}

output "free_subnets" {
  value = data.homelab_cidr_allocation.acme.pools.host.free
}
