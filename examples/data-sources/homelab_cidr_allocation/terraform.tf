terraform {
  required_providers {
    homelab = {
      source = "homelab/homelab"
    }
  }
}
