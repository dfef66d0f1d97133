#!/usr/bin/env bash
# libvirtd-down.sh: stop the libvirtd and virtlogd that libvirtd-up.sh
# started (by their PID files in /run/raksha-libvirtd; a libvirtd it found
# running, or one another LIBVIRTD_OWNER started, is not its own and
# stays). Running guests are destroyed by libvirtd's shutdown only if they
# are transient; tests undefine their own.
set -uo pipefail
RUN=/run/raksha-libvirtd
GRACE=${GRACE:-10}
# Only the owner that started them (LIBVIRTD_OWNER, see libvirtd-up.sh)
# stops them.
if [ -f "$RUN/owner" ] && [ "$(cat "$RUN/owner")" != "${LIBVIRTD_OWNER:-}" ]; then
  echo "libvirtd: started by another owner ($(cat "$RUN/owner")); left running"
  exit 0
fi
for n in libvirtd virtlogd; do
  f=$RUN/$n.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -E "(^|/)$n " >/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq $((GRACE * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
  echo "$n: stopped"
done
rm -f "$RUN/owner"
exit 0
