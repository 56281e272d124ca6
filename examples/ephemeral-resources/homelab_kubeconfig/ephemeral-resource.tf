# The cluster's credentials for the kubernetes provider, never stored in state or plan files
# (Terraform 1.10+, OpenTofu 1.11+). The instance keeps its own copy out of the state too.
resource "homelab_instance" "acme" {
  name                = "acme"
  backend             = "vagrant"
  kubeconfig_in_state = false
}

ephemeral "homelab_kubeconfig" "acme" {
  instance = homelab_instance.acme.name
}

provider "kubernetes" {
  host                   = ephemeral.homelab_kubeconfig.acme.endpoint
  cluster_ca_certificate = ephemeral.homelab_kubeconfig.acme.ca_certificate
  client_certificate     = ephemeral.homelab_kubeconfig.acme.client_certificate
  client_key             = ephemeral.homelab_kubeconfig.acme.client_key
}
