# An instance is imported by its name: the registry entry and its lab are adopted as they are.
terraform import homelab_instance.acme acme
