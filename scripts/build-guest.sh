#!/bin/bash
# Build the lab guest: a Debian kernel and a small initramfs, from Debian
# packages on the fly, cached and rebuilt only when an input changes.
#
#   scripts/build-guest.sh [CACHE_DIR]      (default: <repo>/.cache/guest)
#
# Output, in CACHE_DIR/<key>/ where <key> hashes every input (this script, the
# kernel package's name and version, the busybox, qemu-ga and shared-library
# binaries copied into the image, the guestapp sources and the Go version):
#   vmlinuz     the kernel of linux-image-amd64's current dependency (downloaded
#               with apt-get download and unpacked with dpkg -x, never installed)
#   initrd.gz   busybox-static, qemu-ga and its libraries, virtio/ext4 modules,
#               /bin/guestapp (internal/lab/guestapp, static Go), /init
# The last lines printed are `kernel=PATH`, `initrd=PATH` and `key=KEY`
# (internal/lab/vm reads them). Older builds in CACHE_DIR are removed; the
# downloaded kernel packages stay in CACHE_DIR/debs.
#
# The guest's /init:
#   - mounts proc, sys, devtmpfs, tmpfs on /tmp and /run; loads the modules;
#   - mounts every virtio disk that holds an ext2/3/4 filesystem at
#     /data/<label> (its filesystem label; the device name when it has none);
#   - creates /dev/virtio-ports/<name> links (there is no udev);
#   - starts the record writer `guestapp write` on every /data/<label>, logging
#     to /run/raksha/guestapp.log and /dev/ttyS0, unless the kernel command line
#     has raksha.writer=0 (raksha.interval=DURATION sets its pause, default
#     50ms), and waits (30 s at most) until its first record is durable on
#     every disk, so a guest whose agent answers is already writing;
#   - starts qemu-ga on /dev/virtio-ports/org.qemu.guest_agent.0 with the
#     fsfreeze hook /etc/qemu/fsfreeze-hook, which runs every executable in
#     /etc/qemu/fsfreeze-hook.d/ and logs "HOOK <freeze|thaw> ..." lines with
#     wall-clock and boot-clock times to /run/raksha/hook.log (tmpfs, never
#     frozen) and to /dev/ttyS0;
#   - prints "RAKSHA-READY" to /dev/ttyS0, then idles as PID 1.
#
# Host needs: apt-get (download only), dpkg, busybox-static, qemu-guest-agent,
# go, gzip, flock, sha256sum.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$ROOT/scripts/build-guest.sh"
OUT=${1:-$ROOT/.cache/guest}
GO=${GO:-go}
BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
QEMU_GA=${QEMU_GA:-/usr/sbin/qemu-ga}
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console crc16 mbcache jbd2 crc32c_generic ext4"

die() { echo "build-guest: $*" >&2; exit 1; }
BB_APPLETS=$([ -n "$BUSYBOX" ] && "$BUSYBOX" --list 2>/dev/null || true)
grep -qx cpio <<<"$BB_APPLETS" || die "busybox (static, with cpio) not found: install busybox-static"
[ -x "$QEMU_GA" ] || die "$QEMU_GA not found: install qemu-guest-agent"
command -v "$GO" >/dev/null || die "go not found in PATH"

mkdir -p "$OUT/debs"
exec 9>"$OUT/.lock"
flock 9   # one build at a time (test packages run in parallel)

# --- the kernel package: the current dependency of linux-image-amd64 ---
# Every reader of a pipe here reads to the end (no awk 'exit', head, grep -q):
# under pipefail a writer killed by SIGPIPE fails the script (exit 141),
# depending on how the writer splits its output.
kpkg_name() { apt-cache depends linux-image-amd64 2>/dev/null | awk '!v && /Depends: linux-image-[0-9]/ {v = $2} END {if (v) print v}'; }
KPKG=${KPKG:-$(kpkg_name)}
if [ -z "$KPKG" ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  KPKG=$(kpkg_name)
fi
if [ -z "$KPKG" ]; then
  # No package lists: use a package already downloaded, if any.
  KPKG=$(ls "$OUT/debs" 2>/dev/null | sed -n 's/^\(linux-image-[0-9][^_]*-amd64\)_.*\.deb$/\1/p' | sort -V | tail -1)
fi
[ -n "$KPKG" ] || die "cannot tell the kernel package: apt-cache knows no linux-image-amd64 (run apt-get update)"
KPKG_VER=$(apt-cache policy "$KPKG" 2>/dev/null | awk '!v && /Candidate:/ {v = $2} END {if (v) print v}')
if [ -z "$KPKG_VER" ] || [ "$KPKG_VER" = "(none)" ]; then
  KPKG_VER=$(ls "$OUT/debs" | sed -n "s/^${KPKG}_\([^_]*\)_amd64\.deb$/\1/p" | tail -1)
fi
[ -n "$KPKG_VER" ] || die "no version of $KPKG known to apt-cache nor downloaded"

# --- the cache key: every input of the image ---
LIBS=$(ldd "$QEMU_GA" | grep -o '/[^ ]*' | sort -u)
KEY=$( {
  sha256sum "$SCRIPT" | cut -d' ' -f1
  echo "kernel $KPKG $KPKG_VER"
  echo "modules $MODS"
  sha256sum "$BUSYBOX" "$QEMU_GA" $(for l in $LIBS; do readlink -f "$l"; done) | cut -d' ' -f1
  (cd "$ROOT" && find internal/lab/guestapp -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | xargs sha256sum)
  grep -E '^(go |\s*golang.org/x/sys )' "$ROOT/go.mod" || true
  "$GO" version
} | sha256sum | cut -c1-16)
DEST="$OUT/$KEY"

if [ -f "$DEST/initrd.gz" ] && [ -f "$DEST/vmlinuz" ]; then
  echo "build-guest: cached ($KPKG $KPKG_VER)" >&2
  echo "kernel=$DEST/vmlinuz"; echo "initrd=$DEST/initrd.gz"; echo "key=$KEY"
  exit 0
fi
echo "build-guest: building $KEY ($KPKG $KPKG_VER)" >&2

WORK=$(mktemp -d "$OUT/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- 1. kernel and modules: download the package, unpack it, never install ---
DEB=$(ls "$OUT"/debs/"${KPKG}_${KPKG_VER//:/%3a}"_*.deb 2>/dev/null | sed -n 1p || true)
if [ -z "$DEB" ]; then
  for i in 1 2 3 4 5; do
    (cd "$OUT/debs" && apt-get download "$KPKG=$KPKG_VER" >&2) && break
    [ "$i" = 5 ] && die "apt-get download $KPKG=$KPKG_VER failed"
    sleep $((i * 3))
  done
  DEB=$(ls "$OUT"/debs/"${KPKG}"_*.deb | sort -V | tail -1)
  # keep only this kernel package
  for d in "$OUT"/debs/linux-image-*.deb; do [ "$d" = "$DEB" ] || rm -f "$d"; done
fi
dpkg -x "$DEB" "$WORK/kpkg"
KVER=$(ls "$WORK/kpkg/lib/modules" | sed -n 1p)
cp "$WORK/kpkg/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# --- 2. the initramfs tree ---
R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,data,tmp,run,var,etc/qemu/fsfreeze-hook.d,lib/modules}
ln -s /run "$R/var/run"
cp "$BUSYBOX" "$R/bin/busybox"
for a in $BB_APPLETS; do
  [ "$a" = busybox ] || [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done

# qemu-ga and every shared library ldd lists, at the same absolute paths
cp "$QEMU_GA" "$R/usr/sbin/qemu-ga"
for lib in $LIBS; do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done

# the guest application, a static Go binary
(cd "$ROOT" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "$GO" build -trimpath -ldflags=-s -o "$R/bin/guestapp" ./internal/lab/guestapp/cmd/guestapp)

# kernel modules in dependency order (the package ships no modules.dep; the
# order follows each module's depends=; ext4 needs crc32c_generic at mount time)
MDIR="$WORK/kpkg/lib/modules/$KVER/kernel"
: > "$R/lib/modules/load-order"
for m in $MODS; do
  f=$(find "$MDIR" \( -name "$m.ko" -o -name "$m.ko.xz" \) | sed -n 1p)
  [ -n "$f" ] || { echo "build-guest: module $m not in the package (built in?)" >&2; continue; }
  case "$f" in
    *.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
    *) cp "$f" "$R/lib/modules/$m.ko" ;;
  esac
  echo "$m.ko" >> "$R/lib/modules/load-order"
done

# fsfreeze hook: qemu-ga runs it with "freeze" before FIFREEZE and "thaw" after
# FITHAW, its stdio at /dev/null; a non-zero exit on freeze fails the freeze.
cat > "$R/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
# Runs every executable in /etc/qemu/fsfreeze-hook.d/ in name order with the
# action (freeze|thaw); logs to /run/raksha/hook.log and /dev/ttyS0.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
ACTION=$1
LOG=/run/raksha/hook.log
mkdir -p /run/raksha
note() {
  m="HOOK $ACTION $* $(guestapp stamp 2>/dev/null || echo "uptime=$(cut -d' ' -f1 /proc/uptime)")"
  echo "$m" >> "$LOG"
  echo "$m" > /dev/ttyS0
}
note begin
rc=0
for h in /etc/qemu/fsfreeze-hook.d/*; do
  [ -f "$h" ] && [ -x "$h" ] || continue
  "$h" "$ACTION" >> "$LOG" 2>&1
  r=$?
  note "script=$(basename "$h") exit=$r"
  [ "$r" = 0 ] || rc=$r
done
note "end exit=$rc"
exit $rc
EOF
cat > "$R/etc/qemu/fsfreeze-hook.d/10-app" <<'EOF'
#!/bin/sh
# Where an application would flush and pause (freeze) and resume (thaw).
case "$1" in
  freeze) echo "app: quiesce point" ;;
  thaw) echo "app: resume point" ;;
esac
EOF
chmod +x "$R/etc/qemu/fsfreeze-hook" "$R/etc/qemu/fsfreeze-hook.d/10-app"

cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/raksha
log() { echo "INIT: $* uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0; }

WRITER=1
INTERVAL=50ms
for w in $(cat /proc/cmdline); do
  case "$w" in
    raksha.writer=*) WRITER=${w#*=} ;;
    raksha.interval=*) INTERVAL=${w#*=} ;;
  esac
done

for m in $(cat /lib/modules/load-order); do
  insmod /lib/modules/$m || log "insmod $m failed"
done

# Wait until every virtio block device (virtio device ID 2) has its node.
want=0
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat $d/device 2>/dev/null)" = 0x0002 ] && want=$((want+1))
done
i=0
while :; do
  have=0
  for b in /sys/block/vd*; do [ -b /dev/${b##*/} ] && have=$((have+1)); done
  [ $have -ge $want ] || [ $i -ge 200 ] && break
  sleep 0.05; i=$((i+1))
done
[ $have -ge $want ] || log "only $have of $want virtio disks appeared"

# Mount every virtio disk with an ext2/3/4 filesystem at /data/<label>.
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  dev=/dev/${b##*/}
  magic=$(dd if=$dev bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
  if [ "$magic" != 53ef ]; then log "$dev: no ext filesystem, not mounted"; continue; fi
  label=$(dd if=$dev bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000' | tr -c 'A-Za-z0-9._-' '_')
  [ -n "$label" ] || label=${b##*/}
  [ -e /data/$label ] && label=$label-${b##*/}
  mkdir -p /data/$label
  if mount -t ext4 $dev /data/$label; then log "mounted $dev at /data/$label"; else log "mount $dev at /data/$label FAILED"; fi
done

# /dev/virtio-ports/<name> links (normally made by udev)
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  [ -e "$p/name" ] || continue
  ln -sf /dev/${p##*/} /dev/virtio-ports/$(cat $p/name)
done

# The writer first, and the agent only once the writer's first record is
# durable on every disk: a guest whose agent answers is writing.
if [ "$WRITER" != 0 ] && grep -q ' /data/' /proc/mounts; then
  (guestapp write -interval "$INTERVAL" -root /data -ready /run/raksha/writer.ready 2>&1 | tee -a /run/raksha/guestapp.log > /dev/ttyS0) &
  i=0; while [ ! -e /run/raksha/writer.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
  if [ -e /run/raksha/writer.ready ]; then log "guestapp writer writing"; else log "guestapp writer NOT ready after 30s"; fi
fi

qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
  -F/etc/qemu/fsfreeze-hook -t /run -f /run/qemu-ga.pid -l /dev/ttyS0 &
log "qemu-ga started"
echo "RAKSHA-READY uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
while :; do sleep 3600; done
EOF
chmod +x "$R/init"

# cpio newc + gzip (the host may lack cpio(1); busybox has one)
(cd "$R" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$WORK/initrd.gz"
printf 'key=%s\nkernel_package=%s %s\nkernel_version=%s\n' "$KEY" "$KPKG" "$KPKG_VER" "$KVER" > "$WORK/info"

mkdir "$WORK/out"
mv "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/info" "$WORK/out/"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
# drop older builds
for d in "$OUT"/*/; do
  d=${d%/}
  case "${d##*/}" in "$KEY"|debs) ;; build.*) ;; *) [ -f "$d/info" ] && rm -rf "$d" ;; esac
done
echo "build-guest: built $(du -h "$DEST/initrd.gz" | cut -f1) initramfs, kernel $KVER" >&2
echo "kernel=$DEST/vmlinuz"; echo "initrd=$DEST/initrd.gz"; echo "key=$KEY"
