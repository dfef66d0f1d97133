#!/bin/bash
# Build the file-restore appliance: a kernel and a small initramfs that
# internal/appliance boots in a throwaway QEMU guest to mount a tenant's XFS
# or ext4 volume and stream the requested files back as a tar, so that the
# operator's kernel never parses a tenant's file system. Cached and rebuilt
# only when an input changes.
#
#   scripts/build-appliance.sh [CACHE_DIR]      (default: <repo>/.cache/appliance)
#
# The kernel, found at run time:
#   - APPLIANCE_KERNEL=host, or by default when it is readable: the host's own
#     kernel, /boot/vmlinuz-$(uname -r), with its modules from
#     /lib/modules/$(uname -r);
#   - otherwise (APPLIANCE_KERNEL=debian, or no readable host kernel, as in a
#     container): the kernel of linux-image-amd64's current dependency,
#     downloaded with apt-get download and unpacked with dpkg -x (never
#     installed), as scripts/build-guest.sh does.
# Output, in CACHE_DIR/<key>/ where <key> hashes every input:
#   vmlinuz     that kernel
#   initrd.gz   busybox-static, the virtio, ext4 and XFS modules, /init and
#               /bin/raksha-agent (internal/appliance/agent, static Go)
# The last lines printed are `kernel=PATH`, `initrd=PATH`, `key=KEY`
# (internal/appliance reads them); `dir=PATH` is the directory to give
# `raksha restore files --appliance` (or RAKSHA_APPLIANCE).
#
# The appliance's /init mounts proc, sys and devtmpfs, loads the modules and
# runs raksha-agent, which reads its request from the kernel command line
# (raksha.req=), mounts /dev/vda, writes the tar to the virtio-serial port
# raksha.tar, prints a RAKSHA-RESULT line on the console and powers off.
#
# Host needs: busybox-static, go, gzip, flock, sha256sum; apt-get and dpkg
# when the host's kernel is not used.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$ROOT/scripts/build-appliance.sh"
OUT=${1:-$ROOT/.cache/appliance}
GO=${GO:-go}
BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
# in load order (each after what it depends on); those built into the kernel
# are missing from the modules and skipped
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console crc16 mbcache jbd2 crc32c_generic crc32c-intel libcrc32c ext4 xfs"

die() { echo "build-appliance: $*" >&2; exit 1; }
BB_APPLETS=$([ -n "$BUSYBOX" ] && "$BUSYBOX" --list 2>/dev/null || true)
grep -qx cpio <<<"$BB_APPLETS" || die "busybox (static, with cpio) not found: install busybox-static"
command -v "$GO" >/dev/null || die "go not found in PATH"

mkdir -p "$OUT/debs"
exec 9>"$OUT/.lock"
flock 9   # one build at a time

KREL=$(uname -r)
HOSTK=/boot/vmlinuz-$KREL
MODE=${APPLIANCE_KERNEL:-}
if [ -z "$MODE" ]; then
  if [ -r "$HOSTK" ] && [ -d "/lib/modules/$KREL/kernel" ]; then MODE=host; else MODE=debian; fi
fi

case "$MODE" in
  host)
    [ -r "$HOSTK" ] || die "APPLIANCE_KERNEL=host: $HOSTK is missing or unreadable"
    [ -d "/lib/modules/$KREL/kernel" ] || die "APPLIANCE_KERNEL=host: /lib/modules/$KREL has no modules"
    KID="host $KREL $(sha256sum "$HOSTK" | cut -d' ' -f1)"
    ;;
  debian)
    # Every reader of a pipe reads to the end (see build-guest.sh).
    kpkg_name() { apt-cache depends linux-image-amd64 2>/dev/null | awk '!v && /Depends: linux-image-[0-9]/ {v = $2} END {if (v) print v}'; }
    KPKG=${KPKG:-$(kpkg_name)}
    if [ -z "$KPKG" ]; then
      KPKG=$(ls "$OUT/debs" 2>/dev/null | sed -n 's/^\(linux-image-[0-9][^_]*-amd64\)_.*\.deb$/\1/p' | sort -V | tail -1)
    fi
    [ -n "$KPKG" ] || die "cannot tell the kernel package: apt-cache knows no linux-image-amd64 (run apt-get update)"
    KPKG_VER=$(apt-cache policy "$KPKG" 2>/dev/null | awk '!v && /Candidate:/ {v = $2} END {if (v) print v}')
    if [ -z "$KPKG_VER" ] || [ "$KPKG_VER" = "(none)" ]; then
      KPKG_VER=$(ls "$OUT/debs" | sed -n "s/^${KPKG}_\([^_]*\)_amd64\.deb$/\1/p" | tail -1)
    fi
    [ -n "$KPKG_VER" ] || die "no version of $KPKG known to apt-cache nor downloaded"
    KID="debian $KPKG $KPKG_VER"
    ;;
  *) die "APPLIANCE_KERNEL=$MODE: want host or debian" ;;
esac

KEY=$( {
  sha256sum "$SCRIPT" | cut -d' ' -f1
  echo "kernel $KID"
  echo "modules $MODS"
  sha256sum "$BUSYBOX" | cut -d' ' -f1
  (cd "$ROOT" && find internal/appliance/agent internal/filerestore -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | xargs sha256sum)
  grep -E '^(go |\s*golang.org/x/sys )' "$ROOT/go.mod" || true
  "$GO" version
} | sha256sum | cut -c1-16)
DEST="$OUT/$KEY"

if [ -f "$DEST/initrd.gz" ] && [ -f "$DEST/vmlinuz" ]; then
  echo "build-appliance: cached ($KID)" >&2
  echo "kernel=$DEST/vmlinuz"; echo "initrd=$DEST/initrd.gz"; echo "dir=$DEST"; echo "key=$KEY"
  exit 0
fi
echo "build-appliance: building $KEY ($KID)" >&2

WORK=$(mktemp -d "$OUT/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- 1. the kernel and where its modules are ---
if [ "$MODE" = host ]; then
  cp "$HOSTK" "$WORK/vmlinuz"
  MDIR=/lib/modules/$KREL/kernel
else
  DEB=$(ls "$OUT"/debs/"${KPKG}_${KPKG_VER//:/%3a}"_*.deb 2>/dev/null | sed -n 1p || true)
  if [ -z "$DEB" ]; then
    for i in 1 2 3 4 5; do
      (cd "$OUT/debs" && apt-get download "$KPKG=$KPKG_VER" >&2) && break
      [ "$i" = 5 ] && die "apt-get download $KPKG=$KPKG_VER failed"
      sleep $((i * 3))
    done
    DEB=$(ls "$OUT"/debs/"${KPKG}"_*.deb | sort -V | tail -1)
    for d in "$OUT"/debs/linux-image-*.deb; do [ "$d" = "$DEB" ] || rm -f "$d"; done
  fi
  dpkg -x "$DEB" "$WORK/kpkg"
  KVER=$(ls "$WORK/kpkg/lib/modules" | sed -n 1p)
  cp "$WORK/kpkg/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
  MDIR=$WORK/kpkg/lib/modules/$KVER/kernel
fi

# --- 2. the initramfs tree ---
R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,proc,sys,dev,mnt,tmp,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for a in sh mount insmod poweroff sleep cat; do ln -s busybox "$R/bin/$a"; done
(cd "$ROOT" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "$GO" build -trimpath -ldflags=-s -o "$R/bin/raksha-agent" ./internal/appliance/agent/cmd/raksha-agent)

: > "$R/lib/modules/load-order"
for m in $MODS; do
  f=$(find "$MDIR" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | sed -n 1p)
  [ -n "$f" ] || { echo "build-appliance: module $m not found (built in?)" >&2; continue; }
  case "$f" in
    *.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "$R/lib/modules/$m.ko" ;;
    *) cp "$f" "$R/lib/modules/$m.ko" ;;
  esac
  echo "$m.ko" >> "$R/lib/modules/load-order"
done

cat > "$R/init" <<'INIT'
#!/bin/sh
# The appliance's PID 1: the API file systems, the modules, then the agent;
# whatever the agent does, the guest powers off (QEMU runs with -no-reboot).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do
  insmod /lib/modules/$m 2>/dev/null || echo "APPLIANCE: insmod $m failed" > /dev/console
done
/bin/raksha-agent
poweroff -f
INIT
chmod +x "$R/init"

(cd "$R" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$WORK/initrd.gz"
printf 'key=%s\nkernel=%s\n' "$KEY" "$KID" > "$WORK/info"

mkdir "$WORK/out"
mv "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/info" "$WORK/out/"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
for d in "$OUT"/*/; do
  d=${d%/}
  case "${d##*/}" in "$KEY"|debs|build.*) ;; *) [ -f "$d/info" ] && rm -rf "$d" ;; esac
done
echo "build-appliance: built $(du -h "$DEST/initrd.gz" | cut -f1) initramfs ($KID)" >&2
echo "kernel=$DEST/vmlinuz"; echo "initrd=$DEST/initrd.gz"; echo "dir=$DEST"; echo "key=$KEY"
