#!/usr/bin/env bash
# Node set-up for a homelab instance (generated from a template of terraform-provider-homelab;
# do not edit, every apply rewrites it): kernel settings, containerd, and kubeadm, kubelet and
# kubectl of the requested Kubernetes version from pkgs.k8s.io. Runs once per node as a
# Vagrant shell provisioner, as root, with the node's host-only address as its one argument.
set -euo pipefail
# @HOMELAB_VALUES@
NODE_IP="${1:?usage: node.sh NODE_IP}"

export DEBIAN_FRONTEND=noninteractive
if [ -f /etc/homelab/node.done ]; then
  echo "node already set up"
  exit 0
fi

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

# Container runtime: containerd with the systemd cgroup driver (kubelet's default).
apt-get update -qq
apt-get install -y -qq apt-transport-https ca-certificates curl gpg containerd >/dev/null
mkdir -p /etc/containerd
containerd config default > /etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl enable containerd
systemctl restart containerd

# kubeadm, kubelet and kubectl from the minor's own repository; a full version pins them.
K8S_MINOR="$(printf '%s' "$K8S_VERSION" | cut -d. -f1,2)"
install -d -m 0755 /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${K8S_MINOR}/deb/Release.key" \
  | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v${K8S_MINOR}/deb/ /" \
  > /etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
pin=""
if [ "$K8S_VERSION" != "$K8S_MINOR" ]; then
  pin="=${K8S_VERSION}-*"
fi
apt-get install -y -qq "kubelet${pin}" "kubeadm${pin}" "kubectl${pin}" >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# The kubelet speaks on the instance's host-only network, not on the management one.
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" > /etc/default/kubelet
systemctl enable --now kubelet

mkdir -p /etc/homelab
touch /etc/homelab/node.done
echo "node set up: Kubernetes ${K8S_VERSION}, node IP ${NODE_IP}"
