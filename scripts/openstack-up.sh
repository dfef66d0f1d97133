#!/usr/bin/env bash
# openstack-up.sh: a real all-in-one OpenStack (Debian bookworm's Zed) on
# 127.0.0.1, started by the project without systemd: MariaDB, RabbitMQ,
# Keystone, Placement, Glance (file store), Neutron server (ML2 with the
# linuxbridge mechanism driver) and its Linux bridge agent (ports bind; no
# DHCP or L3 agent), Nova (api, conductor, scheduler, compute with the
# libvirt driver, virt_type qemu), Cinder with the RBD driver on a throwaway
# Ceph (scripts/ceph-up.sh; Nova attaches the volumes through libvirt as RBD
# network disks), Heat. Adapted from the recipes and gotchas of the shared
# notes (OpenStack, OpenStack on libvirt).
#
# Usage: scripts/openstack-up.sh            then: scripts/openstack-down.sh
#        scripts/openstack-up.sh status     (exit 0 when up)
#        scripts/openstack-up.sh rss        (resident memory of each service and the sum)
#
# What it makes: projects prod and staging; users admin (admin of admin, prod
# and staging), prod-member and staging-member (member); a clouds.yaml with
# the entries admin, prod-admin, staging-admin, prod and staging; flavors
# 1 (m1.tiny: 1 vCPU, 256 MiB, 1 GB), 2 (m1.small: 1 vCPU, 512 MiB, 2 GB)
# and 3 (m1.eph: m1.tiny with a 1 GB ephemeral disk, which Nova formats as
# ext4 labelled ephemeral0: default_ephemeral_format, so the lab guest
# mounts it and its writer writes there);
# the public image raksha-lab-guest (the lab guest of scripts/build-guest.sh:
# its kernel and initramfs as aki/ari images, its root disk as qcow2 with
# kernel_id, ramdisk_id, os_command_line, hw_qemu_guest_agent=yes and
# os_shutdown_timeout=3: the busybox guest ignores ACPI, and Nova would wait
# 60 s on every stop); a volume type "ceph" (the default) on the pool
# "volumes"; flat networks with a subnet each: "public" (shared), "prod-net"
# (project prod) and "staging-net" (project staging), each on a physical
# network the agent maps to one end of a veth pair (raksha-phy*), all with
# port security off (the agent's ARP rules need ebtables, and this kernel
# has only its nft flavour, whose rule deletes of Neutron's MAC rules fail
# with exit 4: the agent would resync for ever after the first port's
# delete). No DHCP: the guest configures no address; ports bind, Nova plugs
# a tap into the network's bridge, and the port goes ACTIVE.
#
# State directory: OPENSTACK_DIR (default /var/tmp/raksha-openstack): run/
# (PID files), log/ (one log per service), ceph/ (the cluster), instances/
# (Nova's instances_path), images/ (Glance's store), clouds.yaml, env (a
# KEY=VALUE file: OS_CLIENT_CONFIG_FILE, CEPH_CONF, ...). Configuration is
# written to /etc/{keystone,placement,glance,neutron,nova,cinder,heat} (where
# the packages' WSGI entry points look). Every run prints the state directory
# and the clouds.yaml path; a failure names the phase, the log to read and
# its tail.
#
# Idempotent: when every service answers it says so and returns at once.
# Otherwise it stops what is left of an earlier run and starts the cloud.
# The first set-up (databases synced, Keystone's projects, users and
# catalog, the image, network, flavors and volume type made) ends with a
# baseline: a dump of the databases and Glance's files, taken before
# anything used the cloud. A warm start (the baseline is there and was made
# by this script with these package versions) loads the baseline instead
# of setting up again: the cloud starts as it was after its first set-up,
# with a fresh Ceph cluster (no volume outlives a stop). OPENSTACK_FRESH=1,
# or removing OPENSTACK_DIR/baseline, sets up afresh.
# Debian packages are installed with apt-get when missing (root; no daemon
# is started by their postinst: policy-rc.d).
#
# Libvirtd is the system instance of scripts/libvirtd-up.sh (shared with the
# tests; one libvirtd per machine, as on a compute node). Nova names its
# domains os-instance-%08x so they never collide with the lab's
# instance-%08x domains in the same libvirtd.
set -Eeuo pipefail # -E: the ERR trap also fires inside functions

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
D=${OPENSTACK_DIR:-/var/tmp/raksha-openstack}
PW=${OPENSTACK_PASSWORD:-secret}
WAIT_MAX=${WAIT_MAX:-180}
RBD_SECRET_UUID=${OPENSTACK_RBD_SECRET_UUID:-5b3e6f1a-0c1d-4d5e-9f70-8a9b0c1d2e3f}
# Ceph ports (apart from the tests' clusters): mon msgr2, mon msgr1, the
# other daemons' range.
CEPH_MON_PORT=${OPENSTACK_CEPH_MON_PORT:-47789}
CEPH_MON_V1_PORT=${OPENSTACK_CEPH_MON_V1_PORT:-47790}
CEPH_MSGR_MIN=${OPENSTACK_CEPH_MSGR_PORT_MIN:-47800}
CEPH_MSGR_MAX=${OPENSTACK_CEPH_MSGR_PORT_MAX:-47819}
PY=/usr/bin/python3 # `python3` on PATH may be another interpreter
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export DEBIAN_FRONTEND=noninteractive

APT_OPENSTACK=(python3-keystone python3-nova python3-cinder python3-glance python3-placement python3-neutron
  python3-heat python3-heatclient python3-openstackclient python3-pymysql python3-rbd python3-rados
  python3-libvirt uwsgi-core uwsgi-plugin-python3 rabbitmq-server mariadb-server curl sudo
  ceph-mon ceph-osd ceph-common uuid-runtime
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils qemu-block-extra
  busybox-static qemu-guest-agent e2fsprogs iptables)
# The services, in start order (each has run/<name>.pid and log/<name>.log).
SERVICES=(mariadb rabbitmq keystone placement glance-api neutron-server neutron-linuxbridge-agent nova-api nova-conductor nova-scheduler
  nova-compute cinder-api cinder-scheduler cinder-volume heat-api heat-engine)

RUN=$D/run LOG=$D/log BIN=$D/bin
T0=$(date +%s%N)
ts() { local now; now=$(date +%s%N); printf '[%3d.%01ds] %s\n' $(((now - T0) / 1000000000)) $(((now - T0) / 100000000 % 10)) "$*"; }
PHASE=start
die() { echo "openstack-up.sh: $*" >&2; exit 1; }
on_err() {
  local rc=$? line=$1
  echo "openstack-up.sh: FAILED in phase '$PHASE' (exit $rc, line $line)." >&2
  echo "  logs: $LOG/ (one per service; this phase's below), Ceph: $D/ceph/log/, libvirtd: /run/raksha-libvirtd/libvirtd.log" >&2
  local f
  for f in $(ls -t "$LOG"/*.log 2>/dev/null | head -3); do
    echo "--- tail $f" >&2; tail -n 20 "$f" >&2
  done
  echo "  stop what started with: scripts/openstack-down.sh" >&2
  exit $rc
}

# ---- helpers
# start NAME CMD...: a background process in its own session. No daemon
# keeps the lock (fd 9): a later run would wait for it for ever.
start() { local n=$1; shift; setsid nohup "$@" >>"$LOG/$n.log" 2>&1 </dev/null 9>&- & echo $! >"$RUN/$n.pid"; }
# wait_for DESC SECS CMD...: poll CMD until it succeeds. With WATCH=NAME,
# fail at once when that service's process is gone.
wait_for() {
  local desc=$1 secs=$2; shift 2
  local end=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if [ -n "${WATCH:-}" ] && ! alive "$WATCH"; then
      echo "openstack-up.sh: $WATCH exited while waiting for $desc; see $LOG/$WATCH.log" >&2
      tail -n 15 "$LOG/$WATCH.log" >&2
      return 1
    fi
    [ "$(date +%s)" -lt "$end" ] || { echo "openstack-up.sh: timeout (${secs}s) waiting for $desc" >&2; return 1; }
    sleep 0.5
  done
}
http_up() { curl -s -o /dev/null --max-time 5 "$1"; }
# alive NAME: its recorded process runs.
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
# uwsgi_app NAME PORT FILE [PROCESSES THREADS]. "Connection: close": uwsgi's
# plain http-socket drops kept-alive connections ("Connection reset by
# peer"). nova-api and cinder-api run 1 thread per process: with eventlet
# and uwsgi threads an RPC reply can be lost (MessagingTimeout).
uwsgi_app() {
  local n=$1 port=$2 file=$3 procs=${4:-1} threads=${5:-4}
  start "$n" uwsgi --plugin python3 --http-socket "127.0.0.1:$port" --wsgi-file "$file" --master \
    --processes "$procs" --threads "$threads" --enable-threads --lazy-apps --die-on-term --need-app \
    --buffer-size 65535 --add-header "Connection: close" --procname-prefix-spaced "$n"
}
ksat() { cat <<EOF
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000
auth_url = http://127.0.0.1:5000
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $PW
EOF
}
svc_auth() { cat <<EOF
[$1]
auth_url = http://127.0.0.1:5000
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $2
password = $PW
region_name = RegionOne
EOF
}
admin_env() {
  export OS_AUTH_URL=http://127.0.0.1:5000/v3 OS_USERNAME=admin OS_PASSWORD=$PW OS_PROJECT_NAME=admin \
    OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=RegionOne
  unset OS_CLOUD OS_CLIENT_CONFIG_FILE
}
DB="mysql+pymysql://os:$PW@127.0.0.1"
DATABASES="keystone glance placement nova_api nova nova_cell0 cinder neutron heat"
RABBIT="rabbit://openstack:$PW@127.0.0.1:5672/"

# up: every service's process runs and Keystone issues a token.
is_up() {
  [ -f "$D/ready" ] || return 1
  local n
  for n in "${SERVICES[@]}"; do alive "$n" || return 1; done
  [ -f "$D/ceph/run/mon.a.pid" ] && kill -0 "$(cat "$D/ceph/run/mon.a.pid")" 2>/dev/null || return 1
  virsh -c qemu:///system version >/dev/null 2>&1 || return 1
  curl -sf -o /dev/null --max-time 5 -H 'Content-Type: application/json' -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"},\"password\":\"$PW\"}}}}}" http://127.0.0.1:5000/v3/auth/tokens
}

summary() {
  echo "state: $D"
  echo "clouds.yaml: $D/clouds.yaml (entries admin, prod-admin, staging-admin, prod, staging)"
  echo "logs: $LOG"
  echo "use: export OS_CLIENT_CONFIG_FILE=$D/clouds.yaml OS_CLOUD=prod; openstack server list"
}

# baseline_key: what a baseline is valid for (this script, the packages'
# versions, the guest image).
baseline_key() {
  { cat "${BASH_SOURCE[0]}"; dpkg-query -W "${APT_OPENSTACK[@]}" 2>/dev/null; echo "$GUEST_KEY"; } | sha256sum | cut -c1-16
}

# rss: the resident memory of every service with its descendants (uwsgi
# workers, privsep daemons, the Erlang VM), from /proc through ps, in MiB.
# Guests (qemu, children of libvirtd) and libvirtd itself are not counted.
rss() {
  local f total=0 kb
  # A process counts for a service when it descends from the recorded
  # process or shares its session (the privsep daemons of nova-compute
  # detach from their parent, not from the session start() gave it).
  local tree; tree=$(ps -e -o pid=,ppid=,sid=,rss=)
  for f in "$RUN"/*.pid "$D"/ceph/run/*.pid; do
    [ -f "$f" ] || continue
    kb=$(awk -v root="$(cat "$f")" '{pp[$1]=$2; sid[$1]=$3; r[$1]=$4} END {
      for (p in pp) {
        if (sid[p] == root) { s += r[p]; continue }
        q=p; while (q != "" && q != 0 && q != 1) { if (q == root) { s += r[p]; break } q = pp[q] } }
      print s+0 }' <<<"$tree")
    printf '%-18s %5d MiB\n' "$(basename "$f" .pid)" $((kb / 1024))
    total=$((total + kb))
  done
  printf '%-18s %5d MiB\n' total $((total / 1024))
}

case "${1:-}" in
status)
  if is_up; then echo "openstack: up"; summary; exit 0; fi
  echo "openstack: not up"; exit 1 ;;
rss) rss; exit 0 ;;
esac
[ $# = 0 ] || die "usage: $0 [status|rss]"
[ "$(id -u)" = 0 ] || die "needs root (packages, /etc configuration, the system libvirtd)"

mkdir -p "$D"
exec 9>"$D/.flock"
flock 9
if is_up; then
  echo "openstack: already up"
  summary
  exit 0
fi
trap 'on_err $LINENO' ERR

# ---- install: the Debian packages (only the python3-<service> libraries: the
# daemon packages pull in debconf/dbconfig questions and systemd units) and
# the few files of the *-common packages the services need (api-paste.ini,
# WSGI stubs), unpacked with dpkg-deb -x.
phase_install() {
  PHASE=install
  local missing=() p
  for p in "${APT_OPENSTACK[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    ts "install: Debian packages: ${missing[*]}"
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$LOG/apt.log" 2>&1 ||
      { echo "openstack-up.sh: apt-get install failed; see $LOG/apt.log" >&2; tail -n 20 "$LOG/apt.log" >&2; return 1; }
  fi
  mkdir -p "$BIN"
  if [ ! -f "$D/common/.done" ]; then
    ts "install: files of the *-common packages"
    rm -rf "$D/common"; mkdir -p "$D/common"
    (cd "$D/common" && apt-get download -qq nova-common cinder-common glance-common neutron-common heat-common >/dev/null 2>>"$LOG/apt.log" &&
      for f in *.deb; do dpkg-deb -x "$f" x; done && rm -f ./*.deb)
    touch "$D/common/.done"
  fi
  local x=$D/common/x
  install -m755 "$x"/usr/bin/nova-api-wsgi "$x"/usr/bin/cinder-wsgi "$BIN"/
  mkdir -p /etc/keystone /etc/placement /etc/glance /etc/neutron/plugins/ml2 /etc/nova /etc/cinder /etc/heat
  cp "$x"/usr/share/neutron-common/api-paste.ini /etc/neutron/api-paste.ini
  cp "$x"/usr/share/nova-common/api-paste.ini /etc/nova/api-paste.ini
  cp "$x"/usr/share/cinder-common/api-paste.ini /etc/cinder/api-paste.ini
  cp "$x"/etc/cinder/resource_filters.json /etc/cinder/resource_filters.json
  cp "$x"/usr/share/glance-common/glance-api-paste.ini /etc/glance/glance-api-paste.ini
  cp "$x"/etc/heat/api-paste.ini /etc/heat/api-paste.ini
  # A runner for the console entry points whose /usr/bin stubs live in the
  # daemon packages (not installed).
  cat >"$BIN/os-run" <<EOF
#!$PY
import sys, importlib
mod, func = sys.argv[1].split(':')
sys.argv = [mod.split('.')[-1]] + sys.argv[2:]
sys.exit(getattr(importlib.import_module(mod), func)())
EOF
  chmod +x "$BIN/os-run"
  ts "install: done"
}

phase_guest() {
  PHASE=guest
  ts "guest: the lab guest (scripts/build-guest.sh; cached)"
  local out
  out=$("$here/build-guest.sh" 2>"$LOG/build-guest.log") || { echo "openstack-up.sh: scripts/build-guest.sh failed; see $LOG/build-guest.log" >&2; return 1; }
  GUEST_KERNEL=$(sed -n 's/^kernel=//p' <<<"$out")
  GUEST_INITRD=$(sed -n 's/^initrd=//p' <<<"$out")
  GUEST_ROOT=$(sed -n 's/^root=//p' <<<"$out")
  local key; key=$(sed -n 's/^key=//p' <<<"$out")
  GUEST_KEY=$key
  mkdir -p "$D/guest"
  if [ ! -f "$D/guest/$key.qcow2" ]; then
    rm -f "$D"/guest/*.qcow2
    qemu-img convert -f raw -O qcow2 "$GUEST_ROOT" "$D/guest/$key.qcow2"
  fi
  GUEST_QCOW2=$D/guest/$key.qcow2
}

phase_ceph() {
  PHASE=ceph
  ts "ceph: a throwaway cluster (scripts/ceph-up.sh) with the pool volumes"
  WITH_RGW=0 WITH_RBD=0 CEPHLAB_MON_PORT=$CEPH_MON_PORT CEPHLAB_MON_V1_PORT=$CEPH_MON_V1_PORT \
    CEPHLAB_MSGR_PORT_MIN=$CEPH_MSGR_MIN CEPHLAB_MSGR_PORT_MAX=$CEPH_MSGR_MAX \
    "$here/ceph-up.sh" "$D/ceph" >"$LOG/ceph-up.log" 2>&1 9>&- ||
    { echo "openstack-up.sh: scripts/ceph-up.sh failed; see $LOG/ceph-up.log and $D/ceph/log" >&2; tail -n 20 "$LOG/ceph-up.log" >&2; return 1; }
  export CEPH_CONF=$D/ceph/ceph.conf
  ceph osd pool create volumes 8 8 >/dev/null 2>&1
  rbd pool init volumes
}

phase_libvirt() {
  PHASE=libvirt
  ts "libvirt: the system libvirtd (scripts/libvirtd-up.sh) and the ceph secret"
  LIBVIRTD_OWNER=openstack "$here/libvirtd-up.sh" >>"$LOG/libvirtd-up.log" 2>&1 9>&- ||
    { echo "openstack-up.sh: scripts/libvirtd-up.sh failed; see $LOG/libvirtd-up.log" >&2; tail -n 5 "$LOG/libvirtd-up.log" >&2; return 1; }
  cat >"$RUN/secret.xml" <<EOF
<secret ephemeral='no' private='no'><uuid>$RBD_SECRET_UUID</uuid><usage type='ceph'><name>client.admin secret (raksha openstack-up.sh)</name></usage></secret>
EOF
  virsh -q secret-undefine "$RBD_SECRET_UUID" >/dev/null 2>&1 || true
  virsh -q secret-define "$RUN/secret.xml" >/dev/null
  # A fresh cluster has a new key. (virsh warns that a value on the command
  # line is insecure; it is a throwaway test cluster.)
  virsh -q secret-set-value --secret "$RBD_SECRET_UUID" --base64 "$(ceph auth get-key client.admin)" >/dev/null 2>&1
}

phase_infra() {
  PHASE=infra
  ts "infra: mariadb"
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG/mariadb-install.log" 2>&1
  start mariadb /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --port=3306 --max-connections=500 --skip-name-resolve \
    --innodb-flush-log-at-trx-commit=0 --innodb-buffer-pool-size=64M
  WATCH=mariadb wait_for "mariadb (log: $LOG/mariadb.log)" 60 mysqladmin ping
  mysql -e "CREATE USER IF NOT EXISTS 'os'@'127.0.0.1' IDENTIFIED BY '$PW'; GRANT ALL ON *.* TO 'os'@'127.0.0.1'; FLUSH PRIVILEGES;"
  local db
  for db in $DATABASES; do
    mysql -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db CHARACTER SET utf8mb4;"
  done
  if [ "$WARM" = 1 ]; then
    ts "infra: the baseline's databases"
    mysql <"$D/baseline/db.sql"
  fi
  ts "infra: rabbitmq"
  mkdir -p /var/log/rabbitmq; chown rabbitmq:rabbitmq /var/log/rabbitmq
  start rabbitmq su rabbitmq -s /bin/sh -c 'cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODENAME=rabbit@localhost exec /usr/lib/rabbitmq/bin/rabbitmq-server'
  WATCH=rabbitmq wait_for "rabbitmq (log: $LOG/rabbitmq.log)" 120 rabbitmqctl -q -n rabbit@localhost await_startup
  rabbitmqctl -q -n rabbit@localhost add_user openstack "$PW" >/dev/null 2>&1 || rabbitmqctl -q -n rabbit@localhost change_password openstack "$PW" >/dev/null
  rabbitmqctl -q -n rabbit@localhost set_permissions openstack ".*" ".*" ".*" >/dev/null
}

phase_keystone() {
  PHASE=keystone
  ts "keystone: config, db, bootstrap"
  cat >/etc/keystone/keystone.conf <<EOF
[DEFAULT]
use_stderr = true
[database]
connection = $DB/keystone
[token]
provider = fernet
[fernet_tokens]
key_repository = /etc/keystone/fernet-keys
[credential]
key_repository = /etc/keystone/credential-keys
EOF
  if [ "$WARM" = 0 ]; then
  rm -rf /etc/keystone/fernet-keys /etc/keystone/credential-keys
  {
    keystone-manage db_sync
    keystone-manage fernet_setup --keystone-user root --keystone-group root
    keystone-manage credential_setup --keystone-user root --keystone-group root
    keystone-manage bootstrap --bootstrap-password "$PW" --bootstrap-region-id RegionOne \
      --bootstrap-admin-url http://127.0.0.1:5000/v3/ --bootstrap-internal-url http://127.0.0.1:5000/v3/ \
      --bootstrap-public-url http://127.0.0.1:5000/v3/
  } >>"$LOG/keystone-manage.log" 2>&1
  fi
  uwsgi_app keystone 5000 /usr/bin/keystone-wsgi-public
  WATCH=keystone wait_for "keystone on :5000 (log: $LOG/keystone.log)" 60 http_up http://127.0.0.1:5000/v3
  [ "$WARM" = 0 ] || return 0
  ts "keystone: projects, users, catalog"
  admin_env
  # One openstack process reading commands from stdin saves ~2 s a command.
  openstack >"$LOG/keystone-setup.log" 2>&1 <<EOF
project create --domain default service
project create --domain default prod
project create --domain default staging
role create service
role create heat_stack_owner
role create heat_stack_user
user create --domain default --password $PW prod-member
role add --project prod --user prod-member member
role add --project prod --user prod-member heat_stack_owner
user create --domain default --password $PW staging-member
role add --project staging --user staging-member member
role add --project staging --user staging-member heat_stack_owner
role add --project prod --user admin admin
role add --project staging --user admin admin
user create --domain default --password $PW glance
role add --project service --user glance admin
user create --domain default --password $PW placement
role add --project service --user placement admin
user create --domain default --password $PW nova
role add --project service --user nova admin
role add --project service --user nova service
user create --domain default --password $PW cinder
role add --project service --user cinder admin
role add --project service --user cinder service
user create --domain default --password $PW neutron
role add --project service --user neutron admin
user create --domain default --password $PW heat
role add --project service --user heat admin
domain create heat
user create --domain heat --password $PW heat_domain_admin
role add --domain heat --user-domain heat --user heat_domain_admin admin
service create --name neutron network
endpoint create --region RegionOne network public http://127.0.0.1:9696
endpoint create --region RegionOne network internal http://127.0.0.1:9696
service create --name glance image
endpoint create --region RegionOne image public http://127.0.0.1:9292
endpoint create --region RegionOne image internal http://127.0.0.1:9292
service create --name placement placement
endpoint create --region RegionOne placement public http://127.0.0.1:8778
endpoint create --region RegionOne placement internal http://127.0.0.1:8778
service create --name nova compute
endpoint create --region RegionOne compute public http://127.0.0.1:8774/v2.1
endpoint create --region RegionOne compute internal http://127.0.0.1:8774/v2.1
service create --name cinderv3 volumev3
endpoint create --region RegionOne volumev3 public http://127.0.0.1:8776/v3/%(project_id)s
endpoint create --region RegionOne volumev3 internal http://127.0.0.1:8776/v3/%(project_id)s
service create --name heat orchestration
endpoint create --region RegionOne orchestration public http://127.0.0.1:8004/v1/%(tenant_id)s
endpoint create --region RegionOne orchestration internal http://127.0.0.1:8004/v1/%(tenant_id)s
EOF
  # The interactive CLI goes on after a failed command: check the result.
  openstack user show staging-member -f value -c id >/dev/null
  [ -n "$(openstack endpoint list --service orchestration -f value -c ID)" ] ||
    { echo "openstack-up.sh: keystone set-up incomplete; see $LOG/keystone-setup.log" >&2; return 1; }
}

phase_placement() {
  PHASE=placement
  ts "placement"
  { cat <<EOF
[DEFAULT]
use_stderr = true
[api]
auth_strategy = keystone
[placement_database]
connection = $DB/placement
EOF
    ksat placement; } >/etc/placement/placement.conf
  [ "$WARM" = 1 ] || placement-manage db sync >>"$LOG/placement-manage.log" 2>&1
  uwsgi_app placement 8778 /usr/bin/placement-api
}

phase_glance() {
  PHASE=glance
  ts "glance (file store in $D/images)"
  mkdir -p "$D/lock"
  rm -rf "$D/images"
  if [ "$WARM" = 1 ]; then cp -a "$D/baseline/images" "$D/images"; else mkdir -p "$D/images"; fi
  { cat <<EOF
[DEFAULT]
use_stderr = true
bind_host = 127.0.0.1
bind_port = 9292
workers = 1
enabled_backends = fs:file
[database]
connection = $DB/glance
[paste_deploy]
flavor = keystone
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $D/images/
[oslo_concurrency]
lock_path = $D/lock
EOF
    ksat glance; } >/etc/glance/glance-api.conf
  [ "$WARM" = 1 ] || "$BIN/os-run" glance.cmd.manage:main --config-file /etc/glance/glance-api.conf db_sync >>"$LOG/glance-manage.log" 2>&1
  start glance-api "$BIN/os-run" glance.cmd.api:main --config-file /etc/glance/glance-api.conf
}

phase_neutron() {
  PHASE=neutron
  ts "neutron-server (ML2, linuxbridge) and the Linux bridge agent"
  { cat <<EOF
[DEFAULT]
use_stderr = true
core_plugin = ml2
service_plugins =
auth_strategy = keystone
bind_host = 127.0.0.1
bind_port = 9696
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
transport_url = $RABBIT
# Nova waits for network-vif-plugged before it starts a guest.
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
[database]
connection = $DB/neutron
[oslo_concurrency]
lock_path = $D/lock
[experimental]
# Zed refuses the linuxbridge mechanism driver without this.
linuxbridge = true
EOF
    ksat neutron; svc_auth nova nova; } >/etc/neutron/neutron.conf
  cat >/etc/neutron/plugins/ml2/ml2_conf.ini <<EOF
[ml2]
type_drivers = flat,vlan
tenant_network_types =
mechanism_drivers = linuxbridge
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
EOF
  # The physical networks: one end of a veth pair each (no dummy links in
  # this kernel). The agent makes a bridge brq<network> per network with
  # that end in it; Nova's os-vif plugs the guest's tap into the same.
  local i
  for i in 1 2 3; do
    ip link show "raksha-phy$i" >/dev/null 2>&1 || ip link add "raksha-phy$i" type veth peer name "raksha-phy$i-p"
    ip link set "raksha-phy$i" up; ip link set "raksha-phy$i-p" up
  done
  # The firewall is noop (no security group rules on the host); the
  # server's enable_security_group stays on, so the binding says port_filter
  # and os-vif adds no iptables rules of its own.
  cat >/etc/neutron/plugins/ml2/linuxbridge_agent.ini <<EOF
[linux_bridge]
physical_interface_mappings = physnet1:raksha-phy1,physnet2:raksha-phy2,physnet3:raksha-phy3
[vxlan]
enable_vxlan = false
[securitygroup]
firewall_driver = noop
EOF
  [ "$WARM" = 1 ] || "$BIN/os-run" neutron.db.migration.cli:main --config-file /etc/neutron/neutron.conf \
    --config-file /etc/neutron/plugins/ml2/ml2_conf.ini upgrade heads >>"$LOG/neutron-manage.log" 2>&1
  start neutron-server "$BIN/os-run" neutron.cmd.eventlet.server:main --config-file /etc/neutron/neutron.conf \
    --config-file /etc/neutron/plugins/ml2/ml2_conf.ini
  start neutron-linuxbridge-agent "$BIN/os-run" neutron.cmd.eventlet.plugins.linuxbridge_neutron_agent:main \
    --config-file /etc/neutron/neutron.conf --config-file /etc/neutron/plugins/ml2/linuxbridge_agent.ini
}

phase_nova() {
  PHASE=nova
  ts "nova: config, db (libvirt driver, virt_type qemu; instances in $D/instances)"
  mkdir -p /var/lib/nova "$D/instances"
  { cat <<EOF
[DEFAULT]
use_stderr = true
host = $(hostname)
my_ip = 127.0.0.1
transport_url = $RABBIT
compute_driver = libvirt.LibvirtDriver
state_path = /var/lib/nova
instances_path = $D/instances
instance_name_template = os-instance-%08x
default_ephemeral_format = ext4
running_deleted_instance_action = log
enabled_apis = osapi_compute
osapi_compute_listen = 127.0.0.1
osapi_compute_workers = 1
[api]
auth_strategy = keystone
[api_database]
connection = $DB/nova_api
[database]
connection = $DB/nova
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = -1
[glance]
valid_interfaces = internal,public
[libvirt]
virt_type = qemu
images_type = qcow2
connection_uri = qemu:///system
[vnc]
enabled = false
[workarounds]
disable_rootwrap = true
[oslo_concurrency]
lock_path = $D/lock
[oslo_messaging_rabbit]
heartbeat_in_pthread = false
[service_user]
send_service_user_token = true
auth_url = http://127.0.0.1:5000
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = nova
password = $PW
EOF
    ksat nova; svc_auth placement placement; svc_auth cinder cinder; echo "os_region_name = RegionOne"
    svc_auth neutron neutron; } >/etc/nova/nova.conf
  [ "$WARM" = 1 ] || {
    "$BIN/os-run" nova.cmd.manage:main api_db sync
    "$BIN/os-run" nova.cmd.manage:main cell_v2 map_cell0
    "$BIN/os-run" nova.cmd.manage:main cell_v2 create_cell --name=cell1 --verbose
    "$BIN/os-run" nova.cmd.manage:main db sync
  } >>"$LOG/nova-manage.log" 2>&1
  ts "nova: start api, conductor, scheduler"
  uwsgi_app nova-api 8774 "$BIN/nova-api-wsgi" 2 1
  start nova-conductor "$BIN/os-run" nova.cmd.conductor:main --config-file /etc/nova/nova.conf
  start nova-scheduler "$BIN/os-run" nova.cmd.scheduler:main --config-file /etc/nova/nova.conf
}

phase_cinder() {
  PHASE=cinder
  ts "cinder: config, db (RBD driver, pool volumes)"
  mkdir -p /var/lib/cinder
  { cat <<EOF
[DEFAULT]
use_stderr = true
host = $(hostname)
my_ip = 127.0.0.1
transport_url = $RABBIT
auth_strategy = keystone
osapi_volume_listen = 127.0.0.1
osapi_volume_workers = 1
state_path = /var/lib/cinder
glance_api_servers = http://127.0.0.1:9292
enabled_backends = ceph
default_volume_type = ceph
periodic_fuzzy_delay = 0
[database]
connection = $DB/cinder
[oslo_concurrency]
lock_path = $D/lock
[oslo_messaging_rabbit]
heartbeat_in_pthread = false
[ceph]
volume_driver = cinder.volume.drivers.rbd.RBDDriver
volume_backend_name = ceph
rbd_pool = volumes
rbd_ceph_conf = $D/ceph/ceph.conf
rbd_user = admin
rbd_secret_uuid = $RBD_SECRET_UUID
EOF
    ksat cinder; echo "service_token_roles_required = true"; svc_auth nova nova; } >/etc/cinder/cinder.conf
  [ "$WARM" = 1 ] || "$BIN/os-run" cinder.cmd.manage:main db sync >>"$LOG/cinder-manage.log" 2>&1
  uwsgi_app cinder-api 8776 "$BIN/cinder-wsgi" 2 1
  # The scheduler first: a backend whose capabilities it missed is NoValidBackend.
  start cinder-scheduler "$BIN/os-run" cinder.cmd.scheduler:main --config-file /etc/cinder/cinder.conf
}

phase_heat() {
  PHASE=heat
  ts "heat: config, db"
  { cat <<EOF
[DEFAULT]
use_stderr = true
transport_url = $RABBIT
num_engine_workers = 1
region_name_for_services = RegionOne
heat_metadata_server_url = http://127.0.0.1:8000
heat_waitcondition_server_url = http://127.0.0.1:8000/v1/waitcondition
stack_domain_admin = heat_domain_admin
stack_domain_admin_password = $PW
stack_user_domain_name = heat
[heat_api]
bind_host = 127.0.0.1
bind_port = 8004
workers = 1
[database]
connection = $DB/heat
[clients_keystone]
auth_uri = http://127.0.0.1:5000
[oslo_concurrency]
lock_path = $D/lock
[oslo_messaging_rabbit]
heartbeat_in_pthread = false
EOF
    ksat heat; svc_auth trustee heat; } >/etc/heat/heat.conf
  [ "$WARM" = 1 ] || "$BIN/os-run" heat.cmd.manage:main --config-file /etc/heat/heat.conf db_sync >>"$LOG/heat-manage.log" 2>&1
  start heat-api "$BIN/os-run" heat.cmd.api:main --config-file /etc/heat/heat.conf
  start heat-engine "$BIN/os-run" heat.cmd.engine:main --config-file /etc/heat/heat.conf
}

# phase_wait_*: what the starts above must reach before the next step.
phase_compute() {
  PHASE=nova-compute
  WATCH=placement wait_for "placement on :8778 (log: $LOG/placement.log)" 60 http_up http://127.0.0.1:8778/
  WATCH=nova-api wait_for "nova-api on :8774 (log: $LOG/nova-api.log)" "$WAIT_MAX" http_up http://127.0.0.1:8774/
  admin_env
  # nova-compute after the conductor answers (else it waits for it and
  # retries after 10-20 s).
  ts "nova: wait for nova-conductor"
  WATCH=nova-conductor wait_for "nova-conductor up (log: $LOG/nova-conductor.log)" "$WAIT_MAX" \
    bash -c 'openstack compute service list --service nova-conductor -f value -c State | grep -q up'
  ts "nova: start nova-compute"
  start nova-compute "$BIN/os-run" nova.cmd.compute:main --config-file /etc/nova/nova.conf
  PHASE=cinder-volume
  WATCH=cinder-api wait_for "cinder-api on :8776 (log: $LOG/cinder-api.log)" "$WAIT_MAX" http_up http://127.0.0.1:8776/
  WATCH=cinder-scheduler wait_for "cinder-scheduler up (log: $LOG/cinder-scheduler.log)" "$WAIT_MAX" \
    bash -c 'openstack volume service list -f value -c Binary -c State | grep -q "cinder-scheduler up"'
  start cinder-volume "$BIN/os-run" cinder.cmd.volume:main --config-file /etc/cinder/cinder.conf
}

phase_resources() {
  PHASE=resources
  admin_env
  WATCH=glance-api wait_for "glance on :9292 (log: $LOG/glance-api.log)" "$WAIT_MAX" http_up http://127.0.0.1:9292/
  if [ "$WARM" = 1 ]; then
    PHASE=neutron
    WATCH=neutron-server wait_for "neutron-server on :9696 (log: $LOG/neutron-server.log)" "$WAIT_MAX" http_up http://127.0.0.1:9696/
    wait_agent
    PHASE=nova-compute
    ts "nova: wait for nova-compute"
    WATCH=nova-compute wait_for "nova-compute up (log: $LOG/nova-compute.log)" "$WAIT_MAX" \
      bash -c 'openstack compute service list --service nova-compute -f value -c State | grep -q up'
    wait_pool
    wait_heat
    return 0
  fi
  ts "glance: the image raksha-lab-guest (kernel, ramdisk, qcow2 root)"
  local kid rid
  kid=$(openstack image create --disk-format aki --container-format aki --public --file "$GUEST_KERNEL" raksha-lab-guest-kernel -f value -c id)
  rid=$(openstack image create --disk-format ari --container-format ari --public --file "$GUEST_INITRD" raksha-lab-guest-ramdisk -f value -c id)
  openstack image create --disk-format qcow2 --container-format bare --public --file "$GUEST_QCOW2" \
    --min-disk 1 --min-ram 256 \
    --property kernel_id="$kid" --property ramdisk_id="$rid" \
    --property os_command_line='root=/dev/vda console=ttyS0 quiet panic=-1' \
    --property hw_qemu_guest_agent=yes --property os_shutdown_timeout=3 \
    raksha-lab-guest -f value -c id >/dev/null
  PHASE=neutron
  WATCH=neutron-server wait_for "neutron-server on :9696 (log: $LOG/neutron-server.log)" "$WAIT_MAX" http_up http://127.0.0.1:9696/
  ts "neutron: the flat networks public (shared), prod-net and staging-net"
  openstack network create --share --disable-port-security --provider-network-type flat --provider-physical-network physnet1 public -f value -c id >/dev/null
  openstack subnet create --network public --subnet-range 10.30.0.0/24 public-subnet -f value -c id >/dev/null
  openstack network create --project prod --disable-port-security --provider-network-type flat --provider-physical-network physnet2 prod-net -f value -c id >/dev/null
  openstack subnet create --project prod --network prod-net --subnet-range 10.31.0.0/24 prod-subnet -f value -c id >/dev/null
  openstack network create --project staging --disable-port-security --provider-network-type flat --provider-physical-network physnet3 staging-net -f value -c id >/dev/null
  openstack subnet create --project staging --network staging-net --subnet-range 10.32.0.0/24 staging-subnet -f value -c id >/dev/null
  wait_agent
  PHASE=nova-compute
  ts "nova: wait for nova-compute, map the host, flavors"
  WATCH=nova-compute wait_for "nova-compute up (log: $LOG/nova-compute.log)" "$WAIT_MAX" \
    bash -c 'openstack compute service list --service nova-compute -f value -c State | grep -q up'
  "$BIN/os-run" nova.cmd.manage:main cell_v2 discover_hosts --verbose >>"$LOG/nova-manage.log" 2>&1
  openstack flavor create --id 1 --vcpus 1 --ram 256 --disk 1 m1.tiny -f value -c id >/dev/null
  openstack flavor create --id 2 --vcpus 1 --ram 512 --disk 2 m1.small -f value -c id >/dev/null
  openstack flavor create --id 3 --vcpus 1 --ram 256 --disk 1 --ephemeral 1 m1.eph -f value -c id >/dev/null
  PHASE=cinder-volume
  ts "cinder: volume type ceph"
  openstack volume type create --property volume_backend_name=ceph --public ceph -f value -c id >/dev/null
  wait_pool
  wait_heat
}

# wait_agent: a port binds only once the Linux bridge agent has reported.
wait_agent() {
  PHASE=neutron
  ts "neutron: wait for the Linux bridge agent"
  WATCH=neutron-linuxbridge-agent wait_for "the Linux bridge agent alive (log: $LOG/neutron-linuxbridge-agent.log)" "$WAIT_MAX" \
    bash -c 'openstack network agent list --agent-type linux-bridge -f value -c Alive | grep -q True'
}

# wait_pool: a volume create fails with NoValidBackend until the scheduler
# has the backend's capabilities.
wait_pool() {
  PHASE=cinder-volume
  ts "cinder: wait for the scheduler to see the ceph pool"
  local tok proj
  read -r tok proj < <(openstack token issue -f value -c id -c project_id | tr '\n' ' ') || true # no newline: read says EOF
  [ -n "$proj" ] || { echo "openstack-up.sh: no admin token from keystone" >&2; return 1; }
  WATCH=cinder-volume wait_for "the scheduler to list the ceph pool (log: $LOG/cinder-volume.log)" "$WAIT_MAX" \
    bash -c "curl -sf -H 'X-Auth-Token: $tok' http://127.0.0.1:8776/v3/$proj/scheduler-stats/get_pools | grep -q '\"name\"'"
}

wait_heat() {
  PHASE=heat
  WATCH=heat-api wait_for "heat-api on :8004 (log: $LOG/heat-api.log)" "$WAIT_MAX" http_up http://127.0.0.1:8004/
  WATCH=heat-engine wait_for "heat-engine up (log: $LOG/heat-engine.log)" "$WAIT_MAX" \
    bash -c 'openstack orchestration service list -f value -c Status 2>/dev/null | grep -q up'
}

# save_baseline: the databases and Glance's files as the first set-up left
# them, for the next warm start.
save_baseline() {
  PHASE=baseline
  ts "baseline: the databases and Glance's files for the next warm start"
  rm -rf "$D/baseline.tmp"; mkdir -p "$D/baseline.tmp"
  # shellcheck disable=SC2086
  mysqldump --databases $DATABASES --single-transaction >"$D/baseline.tmp/db.sql"
  cp -a "$D/images" "$D/baseline.tmp/images"
  baseline_key >"$D/baseline.tmp/key"
  rm -rf "$D/baseline"; mv "$D/baseline.tmp" "$D/baseline"
}

phase_clouds() {
  PHASE=clouds
  local entry
  umask 077
  {
    echo "clouds:"
    for entry in "admin admin admin" "prod-admin admin prod" "staging-admin admin staging" \
      "prod prod-member prod" "staging staging-member staging"; do
      set -- $entry
      cat <<EOF
  $1:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: $2
      password: $PW
      project_name: $3
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
EOF
    done
  } >"$D/clouds.yaml"
  cat >"$D/env" <<EOF
OS_CLIENT_CONFIG_FILE=$D/clouds.yaml
CEPH_CONF=$D/ceph/ceph.conf
OPENSTACK_INSTANCES=$D/instances
OPENSTACK_RBD_POOL=volumes
EOF
  umask 022
}

# ---- stop what is left of an earlier run, then set up afresh
if [ -n "$(ls -A "$RUN" 2>/dev/null | grep '\.pid$')" ] || [ -d "$D/ceph" ]; then
  ts "leftovers of an earlier run: stopping them (scripts/openstack-down.sh)"
  OPENSTACK_DIR=$D "$here/openstack-down.sh" --locked >/dev/null
fi
rm -f "$D/ready"
mkdir -p "$RUN" "$D/lock"
if [ -d "$LOG" ]; then rm -rf "$LOG.prev"; mv "$LOG" "$LOG.prev"; fi
mkdir -p "$LOG"
echo "openstack-up.sh: state in $D, logs in $LOG"

phase_install
phase_guest
WARM=0
if [ "${OPENSTACK_FRESH:-0}" != 1 ] && [ -f "$D/baseline/key" ] && [ "$(cat "$D/baseline/key")" = "$(baseline_key)" ]; then
  WARM=1
  ts "warm start from the baseline of the first set-up"
else
  rm -rf "$D/baseline"
  ts "first set-up (no baseline of this script and these packages)"
fi
phase_ceph
phase_libvirt
phase_infra
phase_keystone
# Start everything that needs only Keystone, then wait (the services import
# for seconds each; the waits overlap).
phase_placement
phase_glance
phase_neutron
phase_nova
phase_cinder
phase_heat
phase_compute
phase_resources
phase_clouds
[ "$WARM" = 1 ] || save_baseline
touch "$D/ready"
trap - ERR
ts "openstack: up"
summary
