# Quickstart on a shared registry: the three labs of examples/quickstart, applied from two
# Terraform workspaces that act as two lab hosts (host-a, host-b) keeping one registry on etcd.
# Every workspace is its own netns lab host with its own home; all of them share the etcd
# prefix, so every network of every instance, on either host, is disjoint from every other.
#
# scripts/quickstart.sh --etcd starts a one-member etcd on 127.0.0.1 (in .tools/etcd/), applies
# this folder in the workspaces host-a and host-b, and prints which networks overlap (none).
# By hand, in this folder, with that etcd running:
#   export TF_CLI_CONFIG_FILE=../../.tools/terraformrc   # the CLI config the script writes
#   terraform workspace select host-a
#   terraform plan -var etcd_endpoint=http://127.0.0.1:$(cat ../../.tools/etcd/port)
terraform {
  required_providers {
    homelab = {
      source = "homelab/homelab"
    }
  }
}

variable "etcd_endpoint" {
  description = "Client URL of the etcd that holds the registry, e.g. http://127.0.0.1:2379."
  type        = string
}

variable "etcd_prefix" {
  description = "Key prefix of the registry: hosts that share it share one address plan."
  type        = string
  default     = "/homelab/"
}

variable "netns_host_prefix" {
  description = "Start of this host's lab-host namespace name; the workspace's name without '-' follows (host-a: qshosta)."
  type        = string
  default     = "qs"
}

variable "home_root" {
  description = "Folder of the hosts' homes (their instance folders): each workspace gets <home_root>/<workspace>. The script passes <its etcd folder>/homes."
  type        = string
  default     = "../../.tools/etcd/homes"
}

locals {
  # The workspace is the host: host-a lives in namespace qshosta, home .../host-a, and names its
  # labs acme-a, globex-a, initech-a (names are unique across the whole registry).
  netns_host = "${var.netns_host_prefix}${replace(terraform.workspace, "-", "")}"
  suffix     = trimprefix(terraform.workspace, "host-")
}

provider "homelab" {
  default_backend = "netns"
  netns_host      = local.netns_host
  home            = abspath("${var.home_root}/${terraform.workspace}")

  etcd {
    endpoints = [var.etcd_endpoint]
    prefix    = var.etcd_prefix
  }
}

resource "homelab_instance" "client" {
  for_each = toset(["acme", "globex", "initech"])

  name    = "${each.key}-${local.suffix}"
  workers = 1
}

output "instances" {
  description = "Host and networks of each instance of this workspace, by instance name."
  value = {
    for key, i in homelab_instance.client : i.name => {
      host         = i.host
      subnet       = i.subnet
      pod_cidr     = i.pod_cidr
      service_cidr = i.service_cidr
    }
  }
}
