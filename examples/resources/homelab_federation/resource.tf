# Opt-in, audited reachability between exactly two instances.
resource "homelab_federation" "acme_globex" {
  instances  = [homelab_instance.acme.name, homelab_instance.globex.name]
  reason     = "INC-1234: test the globex API client from acme"
  namespaces = ["default", "payments"]
}
