#!/usr/bin/env bash
# libvirtd-up.sh: make sure the system libvirtd (qemu:///system) runs on this
# machine, as it does on a Nova compute node, for the libvirt host driver's
# tests and the lab's libvirt compute mode. There is no systemd here, so the
# script starts virtlogd and libvirtd itself (daemonised, PID files in
# /run/raksha-libvirtd) unless a libvirtd answers already, in which case it
# leaves it alone. Idempotent; one run at a time (flock).
#
# It prepares what Debian's libvirt-daemon-system would: the libvirt-qemu
# user and group (libvirtd looks the default user up before it reads
# qemu.conf) and the state and log directories. On a host where no libvirtd
# was configured before (no /etc/libvirt/qemu.conf settings of its own), it
# writes a qemu.conf block that runs guests as root without a security
# driver (no AppArmor here) and leaves image ownership alone: test images
# live in the tests' own directories.
#
# Usage: scripts/libvirtd-up.sh        then: scripts/libvirtd-down.sh
# LIBVIRTD_OWNER names who starts it (make test passes its checkout): the
# daemons it starts are recorded as that owner's, and libvirtd-down.sh
# stops them only for the same owner, so that one checkout's make test does
# not stop a libvirtd another started.
# Prints "libvirtd: started" or "libvirtd: already running". Logs:
# /run/raksha-libvirtd/libvirtd.log. Needs (Debian): libvirt-daemon,
# libvirt-daemon-driver-qemu, libvirt-clients, qemu-system-x86; root.
set -euo pipefail

RUN=/run/raksha-libvirtd
WAIT_MAX=${WAIT_MAX:-60}
die() { echo "libvirtd-up.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (libvirtd's system instance, as on a compute node)"
missing=()
for b in libvirtd virtlogd virsh qemu-system-x86_64; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
[ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (Debian packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86; make test-deps installs them)"

mkdir -p "$RUN"
exec 9>"$RUN/lock"
flock 9

answers() { virsh -c qemu:///system version >/dev/null 2>&1; }
if answers; then
  echo "libvirtd: already running"
  exit 0
fi

# ---- what libvirt-daemon-system would have made
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /etc/libvirt/qemu /var/cache/libvirt/qemu
conf=/etc/libvirt/qemu.conf
if ! grep -E '^# raksha: libvirtd-up.sh' "$conf" >/dev/null 2>&1; then
  if grep -E '^[[:space:]]*(user|group|security_driver|dynamic_ownership)[[:space:]]*=' "$conf" >/dev/null 2>&1; then
    echo "libvirtd-up.sh: $conf has settings of its own; leaving it as it is" >&2
  else
    cat >>"$conf" <<'CONF'
# raksha: libvirtd-up.sh (a test machine without systemd or AppArmor)
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
CONF
  fi
fi

# ---- stale PID files of an earlier run whose daemons are gone
for n in virtlogd libvirtd; do
  if [ -f "$RUN/$n.pid" ] && ! kill -0 "$(cat "$RUN/$n.pid")" 2>/dev/null; then rm -f "$RUN/$n.pid"; fi
done
# The daemons keep no descriptor of ours: not the lock (9), and not our
# output (a caller waiting for it to close would wait for ever).
[ -f "$RUN/virtlogd.pid" ] || virtlogd -d --pid-file "$RUN/virtlogd.pid" </dev/null >>"$RUN/virtlogd.out" 2>&1 9>&-
LIBVIRT_LOG_OUTPUTS="3:file:$RUN/libvirtd.log" libvirtd -d --pid-file "$RUN/libvirtd.pid" </dev/null >>"$RUN/libvirtd.out" 2>&1 9>&-
printf '%s\n' "${LIBVIRTD_OWNER:-}" >"$RUN/owner"
for _ in $(seq $((WAIT_MAX * 4))); do
  answers && { echo "libvirtd: started"; exit 0; }
  sleep 0.25
done
die "libvirtd did not answer on qemu:///system within ${WAIT_MAX}s; see $RUN/libvirtd.log"
