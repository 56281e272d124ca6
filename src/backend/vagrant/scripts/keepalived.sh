#!/usr/bin/env bash
# Control-plane virtual IP of a homelab instance with several control planes (generated from a
# template of terraform-provider-homelab; do not edit, every apply rewrites it): keepalived
# holds the instance's API address on the host-only network, on whichever control plane has a
# healthy API server, so that the cluster outlives its first control plane. Runs once per
# control plane, as root, after node.sh and before kubeadm, with the node's host-only address
# and its rank (1 for the first control plane) as arguments.
set -euo pipefail
# @HOMELAB_VALUES@
NODE_IP="${1:?usage: keepalived.sh NODE_IP RANK}"
RANK="${2:?usage: keepalived.sh NODE_IP RANK}"

export DEBIAN_FRONTEND=noninteractive
if [ -f /etc/homelab/keepalived.done ]; then
  echo "keepalived already set up"
  exit 0
fi
apt-get install -y -qq keepalived >/dev/null
# The interface that holds the node's host-only address.
iface="$(ip -o -4 addr show | awk -v ip="$NODE_IP" 'index($4, ip "/") == 1 { print $2; exit }')"
[ -n "$iface" ] || { echo "no interface holds $NODE_IP" >&2; exit 1; }
cat > /etc/keepalived/check-apiserver.sh <<'CHECK'
#!/bin/sh
# Healthy while this node's API server answers, or before the cluster exists (kubeadm init
# needs the address first).
[ ! -f /etc/kubernetes/admin.conf ] || curl -fsk --max-time 2 https://127.0.0.1:6443/livez >/dev/null
CHECK
chmod 0755 /etc/keepalived/check-apiserver.sh
cat > /etc/keepalived/keepalived.conf <<CONF
vrrp_script check_apiserver {
  script "/etc/keepalived/check-apiserver.sh"
  interval 3
  fall 3
  rise 2
}
vrrp_instance ${VRRP_NAME} {
  state $([ "$RANK" = 1 ] && echo MASTER || echo BACKUP)
  interface ${iface}
  virtual_router_id ${VRRP_ID}
  priority $((200 - RANK))
  advert_int 1
  unicast_src_ip ${NODE_IP}
  unicast_peer {
$(for p in $PEERS; do [ "$p" = "$NODE_IP" ] || echo "    $p"; done)
  }
  virtual_ipaddress {
    ${API_ADDRESS}/${PREFIX} dev ${iface}
  }
  track_script {
    check_apiserver
  }
}
CONF
systemctl enable keepalived
systemctl restart keepalived
mkdir -p /etc/homelab
touch /etc/homelab/keepalived.done
