#!/usr/bin/env bash
# ceph-up.sh: start a throwaway single-node Ceph cluster (Debian "pacific" packages)
# under one directory, on 127.0.0.1 only: 1 mon, 1 OSD (memstore by default),
# optionally 1 mgr, 1 radosgw (S3 + Swift) with a test user, and an "rbd" pool.
# Nothing is written outside the directory (no /etc/ceph, /var/lib/ceph, /var/log/ceph).
#
# Usage:  scripts/ceph-up.sh [DIR]          then: scripts/ceph-down.sh [DIR]
#         export CEPH_CONF=DIR/ceph.conf;   set -a; . DIR/credentials.env; set +a
#
# Several clusters can run at once when each gets its own directory and ports.
# Environment (all optional):
#   CEPHLAB_DIR            cluster directory if no argument is given
#                          (default ${TMPDIR:-/tmp}/raksha-cephlab); must not exist or be empty
#   CEPHLAB_MON_PORT       mon port (msgr2)                         default 46789
#   CEPHLAB_MON_V1_PORT    if set, the mon also listens on msgr1 at this port (Cinder's
#                          RBD driver and libvirt take the mon's legacy v1 address from
#                          `ceph mon dump`; scripts/openstack-up.sh sets it)
#   CEPHLAB_RGW_PORT       radosgw HTTP port                        default 47480
#   CEPHLAB_MSGR_PORT_MIN  first/last port daemons other than the   default 46800
#   CEPHLAB_MSGR_PORT_MAX  mon bind (OSD, mgr: about 6 are used)    default 46819
#   WITH_MGR=0|1           run a ceph-mgr (about 300 MB RSS)        default 0
#   WITH_RGW=0|1           run radosgw and create the test user     default 1
#   WITH_RBD=0|1           create and initialise the pool "rbd"     default 1
#   OSD_STORE              memstore (data in RAM) or bluestore      default memstore
#   MEMSTORE_BYTES         memstore capacity                        default 2 GiB
#   CEPHLAB_S3_ACCESS_KEY, CEPHLAB_S3_SECRET_KEY, CEPHLAB_SWIFT_KEY
#                          keys of the radosgw test user (default: generated)
#   CEPHLAB_OWNER_PID      if set, a watchdog runs ceph-down.sh once that process is gone
#                          (a test binary that crashed or timed out leaves no daemons)
#   WAIT_MAX               seconds any single wait may take         default 60
#
# Output: DIR/ceph.conf, DIR/keyring.admin and DIR/credentials.env, a KEY=VALUE file:
#   CEPH_CONF, CEPHLAB_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
#   AWS_SECRET_ACCESS_KEY, AWS_REGION, ST_AUTH, ST_USER, ST_KEY (ST_* as python-swiftclient).
# Daemon logs are in DIR/log, PIDs in DIR/run/*.pid. Needs: ceph ceph-mon ceph-osd radosgw
# (ceph-mgr if WITH_MGR=1), uuid-runtime (uuidgen), curl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${1:-${CEPHLAB_DIR:-${TMPDIR:-/tmp}/raksha-cephlab}}
MON_PORT=${CEPHLAB_MON_PORT:-46789}
MON_V1_PORT=${CEPHLAB_MON_V1_PORT:-}
RGW_PORT=${CEPHLAB_RGW_PORT:-47480}
PMIN=${CEPHLAB_MSGR_PORT_MIN:-46800}
PMAX=${CEPHLAB_MSGR_PORT_MAX:-46819}
OSD_STORE=${OSD_STORE:-memstore}
WITH_MGR=${WITH_MGR:-0}
WITH_RGW=${WITH_RGW:-1}
WITH_RBD=${WITH_RBD:-1}
MEMSTORE_BYTES=${MEMSTORE_BYTES:-2147483648}
WAIT_MAX=${WAIT_MAX:-60}
RGW_USER=raksha

T0=$(date +%s%N)
ts() { local now; now=$(date +%s%N); printf '[%3d.%02ds] %s\n' $(((now - T0) / 1000000000)) $(((now - T0) / 10000000 % 100)) "$*"; }
die() { echo "ceph-up.sh: $*" >&2; exit 1; }

# ---- preconditions: every missing tool is named at once
missing=()
need=(ceph ceph-authtool monmaptool ceph-mon ceph-osd uuidgen)
[ "$WITH_MGR" = 1 ] && need+=(ceph-mgr)
[ "$WITH_RGW" = 1 ] && need+=(radosgw radosgw-admin curl)
[ "$WITH_RBD" = 1 ] && need+=(rbd)
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
[ ${#missing[@]} = 0 ] || die "missing programs: ${missing[*]} (install the Debian packages: make test-deps)"
for p in "$MON_PORT" ${MON_V1_PORT:+"$MON_V1_PORT"} "$RGW_PORT" "$PMIN" "$PMAX"; do
  [[ $p =~ ^[0-9]+$ ]] && [ "$p" -gt 0 ] && [ "$p" -lt 65536 ] || die "invalid port $p"
done
[ "$PMIN" -le "$PMAX" ] || die "CEPHLAB_MSGR_PORT_MIN $PMIN > CEPHLAB_MSGR_PORT_MAX $PMAX"
case "$D" in /*) ;; *) D="$PWD/$D" ;; esac
# unix socket paths (DIR/run/ceph-client.rgw.lab.asok) are limited to 107 bytes.
# Only the daemons get admin sockets: librados clients (ceph CLI, go-ceph) sharing
# the name client.admin would fight over one.
[ ${#D} -le 70 ] || die "directory path $D is too long for the daemons' unix sockets (max 70 bytes)"
if [ -e "$D" ] && [ -n "$(ls -A "$D" 2>/dev/null)" ]; then
  die "$D exists and is not empty; run scripts/ceph-down.sh $D first"
fi

# wait_for DESC CMD...: poll CMD every 0.1 s until it succeeds; fail after WAIT_MAX s
wait_for() {
  local desc=$1; shift
  local end=$(($(date +%s) + WAIT_MAX))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "ceph-up.sh: timeout (${WAIT_MAX}s) waiting for $desc" >&2; return 1; fi
    sleep 0.1
  done
}
# On failure, show where to look; the caller runs ceph-down.sh (which also removes the logs).
trap 'rc=$?; echo "ceph-up.sh: failed (exit $rc) at line $LINENO; logs in $D/log; stop with: $here/ceph-down.sh $D" >&2; for f in "$D"/log/*.log; do [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done; exit $rc' ERR

mkdir -p "$D"/{mon,osd,mgr,rgw,run,log,crash}
FSID=$(uuidgen)
export CEPH_CONF="$D/ceph.conf"
# Without a mgr the mon raises MGR_DOWN (HEALTH_WARN) ~2 min after creation; push that out.
MGR_GRACE=120
[ "$WITH_MGR" = 1 ] || MGR_GRACE=31536000
# The mon's addresses: msgr2 only, or msgr2 and msgr1 (CEPHLAB_MON_V1_PORT).
MON_HOST="v2:127.0.0.1:$MON_PORT" MONMAP_ADDRS="[v2:127.0.0.1:$MON_PORT]" MSGR1=false
if [ -n "$MON_V1_PORT" ]; then
  MONMAP_ADDRS="[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]" MON_HOST=$MONMAP_ADDRS MSGR1=true
fi

cat >"$D/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = $MON_HOST
public addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = $MSGR1
ms bind port min = $PMIN
ms bind port max = $PMAX
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $D/keyring.admin
run dir = $D/run
crash dir = $D/crash
log to file = false
log to stderr = false
err to stderr = true
mon cluster log file = $D/log/cluster.log
# one OSD, no replication
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
[mon]
mon data = $D/mon
# commit map changes every 0.1 s instead of 1 s: pool creation and OSD boot are much faster
paxos propose interval = 0.1
mgr initial modules =
mon mgr mkfs grace = $MGR_GRACE
log to file = true
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
[mgr]
mgr data = $D/mgr
keyring = $D/mgr/keyring
log to file = true
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
[osd]
osd data = $D/osd
keyring = $D/osd/keyring
osd objectstore = $OSD_STORE
memstore device bytes = $MEMSTORE_BYTES
# bluestore's block file must live outside the OSD data dir ("Too many levels of symbolic links")
bluestore block path = $D/osd-block.img
bluestore block create = true
bluestore block size = 10737418240
bluestore fsck on mount = false
bluestore fsck on mkfs = false
osd memory target = 939524096
log to file = true
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
[client.rgw.lab]
keyring = $D/rgw/keyring
admin socket = $D/run/\$cluster-\$name.asok
rgw data = $D/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw swift url = http://127.0.0.1:$RGW_PORT
rgw thread pool size = 64
log to file = true
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
EOF

# ---- keys + monmap
ceph-authtool --create-keyring "$D/keyring.mon-seed" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$D/keyring.admin" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$D/keyring.mon-seed" --import-keyring "$D/keyring.admin" >/dev/null
monmaptool --create --fsid "$FSID" --addv a "$MONMAP_ADDRS" "$D/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring.mon-seed"
rm -f "$D/monmap" "$D/keyring.mon-seed"

# ---- watchdog: tear the cluster down once its owner is gone (or the directory was removed)
if [ -n "${CEPHLAB_OWNER_PID:-}" ]; then
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
                  [ -d "$2" ] && exec "$3" "$2"' cephlab-watchdog \
    "$CEPHLAB_OWNER_PID" "$D" "$here/ceph-down.sh" </dev/null >"$D/log/watchdog.log" 2>&1 &
  echo $! >"$D/run/watchdog.pid"
fi

# ---- mon (daemonizes; PID in its pid file)
ceph-mon -i a
wait_for "mon" ceph --connect-timeout 2 mon stat
ts "mon up on 127.0.0.1:$MON_PORT"

# ---- mgr
if [ "$WITH_MGR" = 1 ]; then
  ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' >"$D/mgr/keyring"
  ceph-mgr -i x
  ts "mgr started"
fi

# ---- osd.0
OSD_UUID=$(uuidgen)
OSD_SECRET=$(ceph-authtool --gen-print-key)
echo "{\"cephx_secret\": \"$OSD_SECRET\"}" >"$D/osd/new.json"
OSD_ID=$(ceph osd new "$OSD_UUID" -i "$D/osd/new.json")
rm -f "$D/osd/new.json"
printf '[osd.%s]\n\tkey = %s\n' "$OSD_ID" "$OSD_SECRET" >"$D/osd/keyring"
ceph-osd -i "$OSD_ID" --mkfs --key "$OSD_SECRET" --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1
ceph-osd -i "$OSD_ID"
osd_up() { ceph osd dump 2>/dev/null | grep "^osd.$OSD_ID up" >/dev/null; }
wait_for "osd.$OSD_ID up" osd_up
ts "osd.$OSD_ID up ($OSD_STORE)"

# ---- radosgw: started before the rbd pool so that its own pool creation overlaps
if [ "$WITH_RGW" = 1 ]; then
  ceph auth get-or-create client.rgw.lab mon 'allow rw' osd 'allow rwx' mgr 'allow rw' >"$D/rgw/keyring"
  radosgw -n client.rgw.lab
fi

# ---- rbd pool (size 1 comes from the defaults)
if [ "$WITH_RBD" = 1 ]; then
  ceph osd pool create rbd 8 8 >/dev/null 2>&1
  rbd pool init rbd
  ts "pool rbd ready"
fi

if [ "$WITH_RGW" = 1 ]; then
  wait_for "radosgw on 127.0.0.1:$RGW_PORT" curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/"
  ts "radosgw answering on 127.0.0.1:$RGW_PORT"
  # Keys: given, or generated (alphanumeric so the env file needs no quoting).
  gen() { local s; s=$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9'); printf '%s' "${s:0:$1}"; }
  AK=${CEPHLAB_S3_ACCESS_KEY:-$(gen 20)}
  SK=${CEPHLAB_S3_SECRET_KEY:-$(gen 40)}
  SWK=${CEPHLAB_SWIFT_KEY:-$(gen 40)}
  for k in "$AK" "$SK" "$SWK"; do
    [[ $k =~ ^[A-Za-z0-9+/=._-]+$ ]] || die "radosgw keys may only contain A-Z a-z 0-9 + / = . _ -"
  done
  radosgw-admin user create --uid "$RGW_USER" --display-name "Raksha tests" \
    --access-key "$AK" --secret-key "$SK" >/dev/null
  radosgw-admin subuser create --uid "$RGW_USER" --subuser "$RGW_USER:swift" --access=full \
    --key-type=swift --secret-key "$SWK" >/dev/null
  umask 077
  cat >"$D/credentials.env.tmp" <<EOF
CEPH_CONF=$D/ceph.conf
CEPHLAB_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
AWS_ENDPOINT_URL_S3=http://127.0.0.1:$RGW_PORT
AWS_ACCESS_KEY_ID=$AK
AWS_SECRET_ACCESS_KEY=$SK
AWS_REGION=us-east-1
ST_AUTH=http://127.0.0.1:$RGW_PORT/auth/1.0
ST_USER=$RGW_USER:swift
ST_KEY=$SWK
EOF
  mv "$D/credentials.env.tmp" "$D/credentials.env"
  ts "user $RGW_USER (S3) and $RGW_USER:swift (Swift) created; credentials in $D/credentials.env"
else
  echo "CEPH_CONF=$D/ceph.conf" >"$D/credentials.env"
fi

ts "health: $(ceph health 2>/dev/null || echo unknown)"
echo "export CEPH_CONF=$D/ceph.conf"
