#!/usr/bin/env bash
# openstack-down.sh: stop the all-in-one OpenStack of scripts/openstack-up.sh.
# Signals only the processes recorded in OPENSTACK_DIR/run/*.pid (each
# service runs in its own session: the whole group is signalled), destroys
# and undefines the Nova domains left in libvirtd (os-instance-*, with their
# checkpoint metadata, which would make an undefine fail), undefines the ceph
# secret, stops the Ceph cluster (scripts/ceph-down.sh: its data is thrown
# away) and the libvirtd that openstack-up.sh started (scripts/libvirtd-down.sh
# with the same owner: a libvirtd the tests or another checkout started stays),
# and removes the Linux bridge agent's bridges and veth pairs.
# Keeps the logs (OPENSTACK_DIR/log), the Debian packages and the files the
# next warm start reuses. Idempotent.
#
# Usage: scripts/openstack-down.sh      (GRACE: seconds before SIGKILL, default 15)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${OPENSTACK_DIR:-/var/tmp/raksha-openstack}
GRACE=${GRACE:-15}
RBD_SECRET_UUID=${OPENSTACK_RBD_SECRET_UUID:-5b3e6f1a-0c1d-4d5e-9f70-8a9b0c1d2e3f}
RUN=$D/run
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
T0=$(date +%s%N)
elapsed() { local now; now=$(date +%s%N); printf '%d.%01ds' $(((now - T0) / 1000000000)) $(((now - T0) / 100000000 % 10)); }

[ -d "$D" ] || { echo "openstack: nothing to stop ($D not found)"; exit 0; }
if [ "${1:-}" != --locked ]; then
  exec 9>"$D/.flock"
  flock 9
fi
rm -f "$D/ready"

# The Nova domains: destroyed, their checkpoint metadata dropped, undefined.
if virsh -c qemu:///system version >/dev/null 2>&1; then
  for dom in $(virsh -c qemu:///system list --all --name 2>/dev/null | grep '^os-instance-'); do
    virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1
    for cp in $(virsh -c qemu:///system checkpoint-list "$dom" --name 2>/dev/null); do
      virsh -c qemu:///system checkpoint-delete "$dom" "$cp" --metadata >/dev/null 2>&1
    done
    virsh -c qemu:///system undefine "$dom" --nvram >/dev/null 2>&1 || virsh -c qemu:///system undefine "$dom" >/dev/null 2>&1
    echo "domain $dom: removed"
  done
  virsh -c qemu:///system secret-undefine "$RBD_SECRET_UUID" >/dev/null 2>&1
fi

# is_ours PID: the process still runs (a PID file may outlive its process
# and the number be reused: only signal what still runs in the recorded
# session).
pids=()
names=()
for f in "$RUN"/*.pid; do
  [ -e "$f" ] || continue
  n=$(basename "$f" .pid)
  pid=$(cat "$f")
  case $n in mariadb | rabbitmq) continue ;; esac # last: the services talk to them while stopping
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    pids+=("$pid") names+=("$n")
  fi
  rm -f "$f"
done
wait_gone() {
  local end=$(($(date +%s) + GRACE)) p alive
  while :; do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    [ "$(date +%s)" -lt "$end" ] || break
    sleep 0.3
  done
  for p in "$@"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
}
[ ${#pids[@]} = 0 ] || wait_gone "${pids[@]}"
[ ${#names[@]} = 0 ] || echo "stopped: ${names[*]}"

# RabbitMQ (and its epmd) and MariaDB.
if [ -f "$RUN/rabbitmq.pid" ]; then
  pid=$(cat "$RUN/rabbitmq.pid")
  rabbitmqctl -q -n rabbit@localhost stop >/dev/null 2>&1
  kill -0 "$pid" 2>/dev/null && { kill -TERM -- "-$pid" 2>/dev/null; wait_gone "$pid"; }
  # epmd is started by the Erlang VM and outlives it: ask it to stop.
  for e in /usr/lib/erlang/erts-*/bin/epmd; do [ -x "$e" ] && ERL_EPMD_ADDRESS=127.0.0.1 "$e" -kill >/dev/null 2>&1; done
  rm -f "$RUN/rabbitmq.pid"
  echo "stopped: rabbitmq"
fi
if [ -f "$RUN/mariadb.pid" ]; then
  pid=$(cat "$RUN/mariadb.pid")
  mysqladmin shutdown >/dev/null 2>&1
  kill -0 "$pid" 2>/dev/null && { kill -TERM -- "-$pid" 2>/dev/null; wait_gone "$pid"; }
  rm -f "$RUN/mariadb.pid"
  echo "stopped: mariadb"
fi

# Ceph (its data goes with it), the instances and Glance's files.
if [ -d "$D/ceph" ]; then
  FAST=1 "$here/ceph-down.sh" "$D/ceph" >/dev/null 2>&1 && echo "stopped: ceph" || echo "ceph-down.sh failed; see $D/ceph/log" >&2
fi
rm -rf "$D/instances" "$D/images"

# The Linux bridge agent's network links: its bridges (brq<network>, the
# guests' taps are gone with the domains) and the veth pairs of the
# physical networks (raksha-phy*).
for l in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '$2 ~ /^brq/ {print $2}') raksha-phy1 raksha-phy2 raksha-phy3; do
  ip link show "$l" >/dev/null 2>&1 && ip link del "$l" 2>/dev/null
done

LIBVIRTD_OWNER=openstack "$here/libvirtd-down.sh" 2>&1 | sed 's/^/libvirtd-down.sh: /'
echo "openstack: down in $(elapsed) (logs kept in $D/log)"
