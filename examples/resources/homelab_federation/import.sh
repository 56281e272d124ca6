# A federation is imported by its id: the two instance names, sorted, joined by "+".
terraform import homelab_federation.acme_globex acme+globex
