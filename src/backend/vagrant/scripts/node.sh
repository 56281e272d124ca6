#!/usr/bin/env bash
# Node set-up for a homelab instance (generated from a template of terraform-provider-homelab;
# do not edit, every apply rewrites it): kernel settings, containerd, and kubeadm, kubelet and
# kubectl of the requested Kubernetes version from pkgs.k8s.io (or the package mirror). Runs
# once per node as a Vagrant shell provisioner, as root, with the node's host-only address as
# its one argument. What the box already holds is not downloaded again: containerd when it is
# installed, the Kubernetes packages when kubeadm is of the requested version.
# Mirrors (empty: none): APT_PROXY carries every apt download; K8S_PACKAGES is the base of the
# Kubernetes package repositories; IMAGE_MIRROR is tried by containerd before each of
# MIRRORED_REGISTRIES (containerd adds `?ns=<registry>` to each request it sends a mirror).
set -euo pipefail
# @HOMELAB_VALUES@
NODE_IP="${1:?usage: node.sh NODE_IP}"

export DEBIAN_FRONTEND=noninteractive
if [ ! -f /etc/homelab/node.done ]; then
  # Kubernetes networking needs these modules and sysctls, and no swap.
  cat > /etc/modules-load.d/kubernetes.conf <<'CONF'
overlay
br_netfilter
CONF
  modprobe overlay
  modprobe br_netfilter
  cat > /etc/sysctl.d/99-kubernetes.conf <<'CONF'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
CONF
  sysctl --system >/dev/null
  swapoff -a
  sed -i '/\sswap\s/ s/^#*/#/' /etc/fstab

  if [ -n "$APT_PROXY" ]; then
    cat > /etc/apt/apt.conf.d/90homelab-proxy <<CONF
Acquire::http::Proxy "${APT_PROXY}";
Acquire::https::Proxy "${APT_PROXY}";
CONF
  else
    rm -f /etc/apt/apt.conf.d/90homelab-proxy
  fi
  curl_proxy=()
  if [ -n "$APT_PROXY" ]; then
    curl_proxy=(--proxy "$APT_PROXY")
  fi

  # Container runtime: containerd with the systemd cgroup driver (kubelet's default).
  if command -v containerd >/dev/null 2>&1; then
    echo "containerd already in the box: not installed again"
  else
    apt-get update -qq
    apt-get install -y -qq containerd >/dev/null
  fi
  mkdir -p /etc/containerd
  containerd config default > /etc/containerd/config.toml
  sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
  rm -rf /etc/containerd/certs.d
  if [ -n "$IMAGE_MIRROR" ]; then
    sed -i 's|^\([[:space:]]*config_path = \)""|\1"/etc/containerd/certs.d"|' /etc/containerd/config.toml
    for registry in $MIRRORED_REGISTRIES; do
      server="https://${registry}"
      if [ "$registry" = docker.io ]; then
        server="https://registry-1.docker.io"
      fi
      mkdir -p "/etc/containerd/certs.d/${registry}"
      cat > "/etc/containerd/certs.d/${registry}/hosts.toml" <<CONF
server = "${server}"

[host."${IMAGE_MIRROR}"]
  capabilities = ["pull", "resolve"]
CONF
    done
  fi
  systemctl enable containerd
  systemctl restart containerd

  # kubeadm, kubelet and kubectl from the minor's own repository; a full version pins them.
  K8S_MINOR="$(printf '%s' "$K8S_VERSION" | cut -d. -f1,2)"
  have="$(kubeadm version -o short 2>/dev/null | sed 's/^v//' || true)"
  if [ -n "$have" ] && { [ "$have" = "$K8S_VERSION" ] || [ "${have%.*}" = "$K8S_VERSION" ]; }; then
    echo "kubeadm ${have} already in the box: Kubernetes packages not installed again"
  else
    if ! command -v curl >/dev/null 2>&1 || ! command -v gpg >/dev/null 2>&1; then
      apt-get update -qq
      apt-get install -y -qq apt-transport-https ca-certificates curl gpg >/dev/null
    fi
    install -d -m 0755 /etc/apt/keyrings
    curl -fsSL "${curl_proxy[@]}" "${K8S_PACKAGES}/v${K8S_MINOR}/deb/Release.key" \
      | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
    echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] ${K8S_PACKAGES}/v${K8S_MINOR}/deb/ /" \
      > /etc/apt/sources.list.d/kubernetes.list
    apt-get update -qq
    pin=""
    if [ "$K8S_VERSION" != "$K8S_MINOR" ]; then
      pin="=${K8S_VERSION}-*"
    fi
    apt-get install -y -qq "kubelet${pin}" "kubeadm${pin}" "kubectl${pin}" >/dev/null
  fi
  apt-mark hold kubelet kubeadm kubectl >/dev/null
  mkdir -p /etc/homelab
  touch /etc/homelab/node.done
else
  echo "node already set up"
fi

# The kubelet speaks on the instance's host-only network, not on the management one (written
# on every run: a box packaged from a set-up node carries another node's address).
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" > /etc/default/kubelet
systemctl enable kubelet
systemctl restart kubelet
echo "node set up: Kubernetes ${K8S_VERSION}, node IP ${NODE_IP}"
