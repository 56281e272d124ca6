# Every plan re-proves isolation: from every node and pod of every instance, each address of the
# others must get no answer. A broken isolation is a warning naming what answered.
check "isolation" {
  data "homelab_reachability" "all" {}

  assert {
    condition     = length(data.homelab_reachability.all.foreign_reachable) == 0
    error_message = "isolation broken: ${join(", ", data.homelab_reachability.all.foreign_reachable)}"
  }
}

# Terraform before 1.5 (no check blocks): the matrix in an output.
data "homelab_reachability" "acme" {
  instance   = "acme" # probe from acme's nodes and pods only
  timeout_ms = 300
}

output "reachability" {
  value = {
    for r in data.homelab_reachability.acme.matrix :
    "${r.from} -> ${r.target_name} (${r.target})" => r.reachable ? "answered" : r.reason
  }
}
