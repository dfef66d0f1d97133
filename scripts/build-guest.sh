#!/bin/bash
# Build the lab guest: a Debian kernel, a small initramfs and a root disk
# image holding the same tree, from Debian packages on the fly, cached and
# rebuilt only when an input changes.
#
#   scripts/build-guest.sh [CACHE_DIR]      (default: <repo>/.cache/guest)
#
# Output, in CACHE_DIR/<key>/ where <key> hashes every input (this script, the
# kernel package's name and version, the busybox, qemu-ga and shared-library
# binaries copied into the image, the guestapp sources, the Go version and
# mkfs.ext4's version and configuration):
#   vmlinuz     the kernel of linux-image-amd64's current dependency (downloaded
#               with apt-get download and unpacked with dpkg -x, never installed)
#   initrd.gz   busybox-static, qemu-ga and its libraries, virtio/ext4 modules,
#               /bin/guestapp (internal/lab/guestapp, static Go), /init
#   root.img    a sparse raw ext4 image of 256 MiB, filesystem label `root`
#               (mkfs.ext4 -d, e2fsprogs), holding the same tree plus the marker
#               /etc/raksha-rootfs: the root disk of an image-booted server, as
#               Nova boots an AMI-style image (this kernel and initramfs,
#               `root=/dev/vda` on the command line, the disk a qcow2 overlay
#               on this raw base as the first virtio disk)
# The last lines printed are `kernel=PATH`, `initrd=PATH`, `root=PATH` and
# `key=KEY` (internal/lab/vm reads them). Older builds in CACHE_DIR are
# removed; the downloaded kernel packages stay in CACHE_DIR/debs.
#
# The guest's /init:
#   - mounts proc, sys, devtmpfs, tmpfs on /tmp and /run; loads the modules
#     (those not loaded yet);
#   - with root=/dev/vdX or root=LABEL=<label> on the kernel command line
#     (stage 1, in the initramfs): waits for the virtio disks, mounts that
#     device read-write as ext4 at /newroot, moves /proc, /sys, /dev, /run and
#     /tmp into it and execs `switch_root /newroot /init`; when the device is
#     missing, is no ext filesystem, does not mount or has no /init, it logs
#     an "INIT: ..." line to /dev/ttyS0 and goes on as without root=;
#   - on the root disk (stage 2: /etc/raksha-rootfs exists) the same /init
#     runs again as PID 1: it skips what is mounted or loaded already and
#     bind-mounts / at /data/root, so the writer also writes on the root disk
#     (/raksha-writer/ on the root file system);
#   - mounts every virtio disk that holds an ext2/3/4 filesystem and is not
#     mounted yet (the root disk is) at /data/<label> (its filesystem label;
#     the device name when it has none; <label>-<device> when taken);
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
#     frozen) and to /dev/ttyS0; on a root disk guest-fsfreeze freezes / too
#     (its bind mount /data/root is the same file system), so what the hook and
#     qemu-ga write while frozen stays on tmpfs (/run), off the root disk;
#   - prints "RAKSHA-READY" to /dev/ttyS0, then idles as PID 1.
#
# Host needs: apt-get (download only), dpkg, busybox-static, qemu-guest-agent,
# e2fsprogs (mkfs.ext4 with -d), go, gzip, flock, sha256sum.
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
# mkfs.ext4 lives in /sbin or /usr/sbin, which a user's PATH may lack
MKFS=${MKFS_EXT4:-$(PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 || true)}
[ -n "$MKFS" ] && [ -x "$MKFS" ] || die "mkfs.ext4 not found: install e2fsprogs"
MKE2FS_CONF=${MKE2FS_CONFIG:-/etc/mke2fs.conf}
ROOT_SIZE=256M

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
  echo "root $ROOT_SIZE"
  "$MKFS" -V 2>&1
  cat "$MKE2FS_CONF" 2>/dev/null || true
} | sha256sum | cut -c1-16)
DEST="$OUT/$KEY"

if [ -f "$DEST/initrd.gz" ] && [ -f "$DEST/vmlinuz" ] && [ -f "$DEST/root.img" ]; then
  echo "build-guest: cached ($KPKG $KPKG_VER)" >&2
  echo "kernel=$DEST/vmlinuz"; echo "initrd=$DEST/initrd.gz"; echo "root=$DEST/root.img"; echo "key=$KEY"
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
# Stage 1 runs in the initramfs; stage 2 (the marker below exists) is the
# same script run again as PID 1 on the root disk after switch_root, where
# /proc, /sys, /dev, /run and /tmp are mounted already and the modules loaded.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
STAGE2=
[ -e /etc/raksha-rootfs ] && STAGE2=1
# mounted DIR: something is mounted at DIR (busybox-static has no mountpoint)
mounted() { [ -e /proc/mounts ] && awk -v m="$1" '$2 == m {f = 1} END {exit !f}' /proc/mounts; }
# devmounted DEV: DEV is mounted somewhere
devmounted() { awk -v d="$1" '$1 == d {f = 1} END {exit !f}' /proc/mounts; }
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mounted /tmp || mount -t tmpfs tmpfs /tmp
mounted /run || mount -t tmpfs tmpfs /run
mkdir -p /run/raksha
log() { echo "INIT: $* uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0; }
# is_ext DEV: DEV holds an ext2/3/4 superblock; fslabel DEV: its label
is_ext() { [ "$(dd if=$1 bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 53ef ]; }
fslabel() { dd if=$1 bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000'; }

WRITER=1
INTERVAL=50ms
ROOTDEV=
for w in $(cat /proc/cmdline); do
  case "$w" in
    raksha.writer=*) WRITER=${w#*=} ;;
    raksha.interval=*) INTERVAL=${w#*=} ;;
    root=*) ROOTDEV=${w#root=} ;;
  esac
done

for m in $(cat /lib/modules/load-order); do
  [ -d /sys/module/${m%.ko} ] && continue
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

# Stage 1 with root=: mount the root disk at /newroot, move the API file
# systems into it and switch_root to its /init. It returns only when that
# cannot be done (the guest then goes on without a root disk).
switch_to_root() {
  dev=
  case "$ROOTDEV" in
    LABEL=?*)
      for b in /sys/block/vd*; do
        [ -e "$b" ] || continue
        if is_ext /dev/${b##*/} && [ "$(fslabel /dev/${b##*/})" = "${ROOTDEV#LABEL=}" ]; then dev=/dev/${b##*/}; break; fi
      done
      [ -n "$dev" ] || { log "root=$ROOTDEV: no virtio disk has an ext filesystem labelled ${ROOTDEV#LABEL=}; staying in the initramfs"; return 1; } ;;
    /dev/vd?*) dev=$ROOTDEV ;;
    *) log "root=$ROOTDEV: not supported (want root=/dev/vdX or root=LABEL=<label>); staying in the initramfs"; return 1 ;;
  esac
  [ -b "$dev" ] || { log "root=$ROOTDEV: $dev does not exist; staying in the initramfs"; return 1; }
  is_ext $dev || { log "root=$ROOTDEV: $dev holds no ext filesystem; staying in the initramfs"; return 1; }
  mkdir -p /newroot
  mount -t ext4 -o rw $dev /newroot || { log "root=$ROOTDEV: mount $dev at /newroot FAILED; staying in the initramfs"; return 1; }
  for m in /init /etc/raksha-rootfs /proc /sys /dev /run /tmp; do
    [ -e /newroot$m ] && continue
    log "root=$ROOTDEV: $dev has no $m; staying in the initramfs"
    umount /newroot
    return 1
  done
  log "switching to root $dev (root=$ROOTDEV)"
  moved=
  for m in /proc /sys /dev /run /tmp; do
    if ! mount --move $m /newroot$m; then
      for u in $moved; do mount --move /newroot$u $u; done
      umount /newroot
      log "root=$ROOTDEV: mount --move $m /newroot$m FAILED; staying in the initramfs"
      return 1
    fi
    moved="$m $moved"
  done
  exec switch_root /newroot /init
}
[ -z "$STAGE2" ] && [ -n "$ROOTDEV" ] && switch_to_root

# Stage 2: the root file system at /data/root too, so that the writer also
# writes on the root disk (/raksha-writer/ there).
if [ -n "$STAGE2" ]; then
  log "running on root $(awk '$2 == "/" {d = $1} END {print d}' /proc/mounts)"
  mkdir -p /data/root
  if mounted /data/root || mount --bind / /data/root; then log "bound / at /data/root"; else log "bind mount / at /data/root FAILED"; fi
fi

# Mount every virtio disk with an ext2/3/4 filesystem, not mounted yet (the
# root disk is), at /data/<label>.
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  dev=/dev/${b##*/}
  if devmounted $dev; then log "$dev: mounted already, not mounted again"; continue; fi
  if ! is_ext $dev; then log "$dev: no ext filesystem, not mounted"; continue; fi
  label=$(fslabel $dev | tr -c 'A-Za-z0-9._-' '_')
  [ -n "$label" ] || label=${b##*/}
  mounted /data/$label && label=$label-${b##*/}
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

# --- 3. the root disk: the same tree plus the marker stage 2 of /init looks
# for, as a sparse raw ext4 image labelled root (inode tables and journal
# written now, so the guest does not write them lazily later) ---
echo "raksha lab guest root file system $KEY" > "$R/etc/raksha-rootfs"
truncate -s "$ROOT_SIZE" "$WORK/root.img"
MKE2FS_CONFIG=$MKE2FS_CONF "$MKFS" -q -F -t ext4 -d "$R" -L root \
  -E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0 "$WORK/root.img" >&2 \
  || die "mkfs.ext4 -d $R $WORK/root.img failed (e2fsprogs 1.43 or newer needed)"
rm -f "$R/etc/raksha-rootfs"
printf 'key=%s\nkernel_package=%s %s\nkernel_version=%s\n' "$KEY" "$KPKG" "$KPKG_VER" "$KVER" > "$WORK/info"

mkdir "$WORK/out"
mv "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/root.img" "$WORK/info" "$WORK/out/"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
# drop older builds
for d in "$OUT"/*/; do
  d=${d%/}
  case "${d##*/}" in "$KEY"|debs) ;; build.*) ;; *) [ -f "$d/info" ] && rm -rf "$d" ;; esac
done
echo "build-guest: built $(du -h "$DEST/initrd.gz" | cut -f1) initramfs, $(du -h "$DEST/root.img" | cut -f1) root.img, kernel $KVER" >&2
echo "kernel=$DEST/vmlinuz"; echo "initrd=$DEST/initrd.gz"; echo "root=$DEST/root.img"; echo "key=$KEY"
