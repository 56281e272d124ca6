# Quickstart: three isolated client labs on network namespaces.
# Each gets its own /24, pod CIDR and service CIDR, all disjoint; nothing routes between them.
# Needs Terraform 1.5+ (the check block); scripts/quickstart.sh runs the newest on the machine.
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

# Every plan re-proves isolation: from every node and pod, nothing of another instance may
# answer. When something does, the plan warns naming it.
check "isolation" {
  data "homelab_reachability" "all" {}

  assert {
    condition     = length(data.homelab_reachability.all.foreign_reachable) == 0
    error_message = "isolation broken: ${join(", ", data.homelab_reachability.all.foreign_reachable)}"
  }
}

# The same probe once the labs exist, for the matrix below.
data "homelab_reachability" "matrix" {
  depends_on = [homelab_instance.client]
}

locals {
  probes = data.homelab_reachability.matrix.matrix
  froms  = distinct([for r in local.probes : r.from])
  tos    = sort(distinct([for r in local.probes : r.to]))
  cell = {
    for f in local.froms : f => {
      for t in local.tos : t => format("%d/%d",
        length([for r in local.probes : r if r.from == f && r.to == t && r.reachable]),
      length([for r in local.probes : r if r.from == f && r.to == t]))
    }
  }
}

output "instances" {
  description = "Networks, nodes and pods of each instance."
  value = {
    for name, i in homelab_instance.client : name => {
      subnet       = i.subnet
      gateway      = i.gateway
      pod_cidr     = i.pod_cidr
      service_cidr = i.service_cidr
      nodes        = { for n in i.nodes : n.name => { ip = n.ip, pod_cidr = n.pod_cidr, pods = n.pods } }
    }
  }
}

output "reachability" {
  description = "From each node and pod (rows), how many addresses of each instance (columns) answered a ping."
  value = join("\n", concat(
    ["Reachability (homelab_reachability: ICMP from inside each node and pod; answered/probed):", ""],
    [format("%-24s%s", "from", join("", [for t in local.tos : format("%-10s", t)]))],
    [for f in local.froms : format("%-24s%s", f, join("", [for t in local.tos : format("%-10s", local.cell[f][t])]))],
    [""],
    length(data.homelab_reachability.matrix.foreign_reachable) == 0
    ? ["Each instance reaches its own nodes and pods; nothing of another instance answers (${length([for r in local.probes : r if r.to != r.from_instance && length(regexall("^no route", r.reason)) > 0])} probes: no route)."]
    : ["ISOLATION BROKEN: ${join(", ", data.homelab_reachability.matrix.foreign_reachable)}"],
  ))
}
