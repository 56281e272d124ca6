#!/usr/bin/env bash
# First control plane of a homelab instance (generated from a template of
# terraform-provider-homelab; do not edit, every apply rewrites it): `kubeadm init` on the
# instance's own pod and service CIDRs, advertised on the host-only address, with the API at
# API_ADDRESS (this node's address, or with several control planes the virtual IP that
# keepalived.sh holds), then Cilium with
# cluster-pool IPAM on the pod CIDR. Runs once, as root, after node.sh. Other nodes are joined
# afterwards by the provider (it asks this node for a fresh join token).
set -euo pipefail
# @HOMELAB_VALUES@

export KUBECONFIG=/etc/kubernetes/admin.conf
if [ -f /etc/kubernetes/admin.conf ]; then
  echo "control plane already initialised"
  exit 0
fi

# The bootstrap token and the certificate key are not printed: this output is streamed into
# the provider's log (the provider asks for fresh ones when it joins a node).
kubeadm init \
  --skip-token-print \
  --skip-certificate-key-print \
  --node-name="$NODE_NAME" \
  --pod-network-cidr="$POD_CIDR" \
  --service-cidr="$SERVICE_CIDR" \
  --apiserver-advertise-address="$ADVERTISE_ADDRESS" \
  --control-plane-endpoint="${API_ADDRESS}:6443" \
  --upload-certs

# Cilium, through its CLI (checksum-verified, from CILIUM_CLI: the release folder or its
# mirror), with cluster-pool IPAM on the pod CIDR. A box that holds /usr/local/bin/cilium
# keeps it.
if command -v cilium >/dev/null 2>&1; then
  echo "cilium CLI already in the box: not downloaded"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  curl -fsSL -o "$work/cilium-linux-amd64.tar.gz" "$CILIUM_CLI/cilium-linux-amd64.tar.gz"
  curl -fsSL -o "$work/cilium-linux-amd64.tar.gz.sha256sum" "$CILIUM_CLI/cilium-linux-amd64.tar.gz.sha256sum"
  (cd "$work" && sha256sum --check --quiet cilium-linux-amd64.tar.gz.sha256sum)
  tar -xzf "$work/cilium-linux-amd64.tar.gz" -C /usr/local/bin cilium
fi
cilium install --version "$CILIUM_VERSION" \
  --set ipam.mode=cluster-pool \
  --set "ipam.operator.clusterPoolIPv4PodCIDRList={${POD_CIDR}}" \
  --set "ipam.operator.clusterPoolIPv4MaskSize=${POD_NODE_MASK}"
cilium status --wait --wait-duration 10m
echo "control plane ready at https://${API_ADDRESS}:6443"
