#!/usr/bin/env bash
# ceph-down.sh: stop the throwaway cluster that scripts/ceph-up.sh started and delete its
# directory. Only the PIDs recorded in DIR/run/*.pid are signalled, and only if they still
# are Ceph daemons (no pkill/killall: other clusters may be running).
#
# Usage: scripts/ceph-down.sh [DIR]      (DIR defaults as in ceph-up.sh)
# Environment: CEPHLAB_DIR; FAST=1 sends SIGKILL at once (the data is thrown away anyway);
#              GRACE seconds between SIGTERM and SIGKILL (default 10); KEEP_DIR=1 keeps DIR.
set -uo pipefail
D=${1:-${CEPHLAB_DIR:-${TMPDIR:-/tmp}/raksha-cephlab}}
GRACE=${GRACE:-10}
SIG=TERM
[ "${FAST:-0}" = 1 ] && SIG=KILL
T0=$(date +%s%N)
elapsed() { local now; now=$(date +%s%N); printf '%d.%02ds' $(((now - T0) / 1000000000)) $(((now - T0) / 10000000 % 100)); }
[ -d "$D" ] || { echo "ceph-down.sh: $D not found, nothing to stop"; exit 0; }
# A guard against deleting the wrong thing: only an empty directory or one ceph-up.sh made.
if [ -n "$(ls -A "$D" 2>/dev/null)" ] && [ ! -d "$D/run" ]; then
  echo "ceph-down.sh: $D does not look like a ceph-up.sh cluster directory; not touching it" >&2
  exit 1
fi

alive() { # PID: running and not a zombie (a dead daemon waits for PID 1 to reap it)
  kill -0 "$1" 2>/dev/null && [ "$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
# stop_group PIDFILE...: signal the daemons whose pid files are given, then wait for them.
stop_group() {
  local pids=() f pid deadline killed
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    [[ $pid =~ ^[0-9]+$ ]] || continue
    # only signal it if it still is a Ceph daemon (the PID may have been reused)
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -E '^(/usr/bin/)?(ceph-mon|ceph-mgr|ceph-osd|radosgw) ' >/dev/null; then
      kill -s "$SIG" "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  deadline=$(($(date +%s) + GRACE))
  for pid in ${pids[@]+"${pids[@]}"}; do
    killed=0
    while alive "$pid"; do
      if [ $killed = 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then
        echo "ceph-down.sh: pid $pid ignored SIGTERM for ${GRACE}s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
        killed=1
      fi
      sleep 0.05
    done
  done
}
# Order matters for a quick SIGTERM shutdown (radosgw once did not exit within 10 s when it
# was signalled together with the OSD): radosgw, then OSD and mgr, then mon.
stop_group "$D"/run/client.rgw.*.pid
stop_group "$D"/run/osd.*.pid "$D"/run/mgr.*.pid
stop_group "$D"/run/mon.*.pid
if [ "${KEEP_DIR:-0}" = 1 ]; then
  rm -f "$D"/run/*.pid
else
  rm -rf "$D"
fi
echo "ceph-down.sh: $D stopped in $(elapsed)"
