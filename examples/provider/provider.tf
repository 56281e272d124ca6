terraform {
  required_providers {
    homelab = {
      source  = "homelab/homelab"
      version = "0.1.0"
    }
  }
}

provider "homelab" {
  # Registry folder (default: $HOMELAB_HOME, else ~/.homelab).
  home = "/var/lib/homelab"

  # Instances without `backend` use this one.
  default_backend = "netns"

  # The defaults, spelled out: host-only /24s from VirtualBox's permitted range,
  # pod /16s from 10.240.0.0/12 starting at 10.244.0.0/16, service /16s from 10.96.0.0/12.
  host_pool    = "192.168.56.0/21"
  pod_pool     = "10.240.0.0/12"
  service_pool = "10.96.0.0/12"

  # How long a plan holds the networks it shows.
  reservation_ttl = "24h"

  # A team's registry: several lab hosts sharing one address plan on etcd, instead of the
  # registry file in `home` (which still holds this host's instance folders).
  # etcd {
  #   endpoints = ["https://10.0.0.5:2379", "https://10.0.0.6:2379", "https://10.0.0.7:2379"]
  #   prefix    = "/homelab/"
  #   ca_file   = "/etc/homelab/etcd-ca.pem"
  #   cert_file = "/etc/homelab/client.pem"
  #   key_file  = "/etc/homelab/client-key.pem"
  # }
}
