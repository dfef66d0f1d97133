#!/usr/bin/env bash
# bench/make-image.sh IMAGE SIZE BENCHTOOL: make the bench's ext4 disk image
# (once; IMAGE.ok marks a finished one): real files of this machine (the Go
# toolchain, then /usr/lib, /usr/share, /usr/bin) until 35% of SIZE, the rest
# holes, with fixed UUIDs, hash seed and times. Used by bench/run.sh and
# bench/libvirt.sh.
set -euo pipefail
BASE=$1 SIZE=$2 BT=$3
[[ -f $BASE.ok ]] && exit 0
SIZE_BYTES=$("$BT" size "$SIZE")
IMGDIR=$(dirname "$BASE")
mkdir -p "$IMGDIR"
rm -f "$BASE" "$BASE.ok"
stage=$IMGDIR/staging.tmp
rm -rf "$stage"
mkdir -p "$stage"
budget=$((SIZE_BYTES * 35 / 100))
"$BT" stage -budget "$budget" -dest "$stage" "$(go env GOROOT)" /usr/lib /usr/share /usr/bin >&2
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -t ext4 -L raksha-bench \
	-U 6b1c4f52-3e0a-4d7e-9a55-2f1c0b7a9e10 -E root_owner=0:0,hash_seed=0f3c2d1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f \
	-d "$stage" "$BASE" "$SIZE" >&2 || { echo "make-image.sh: mkfs.ext4 failed" >&2; exit 1; }
rm -rf "$stage"
echo "size=$SIZE" >"$BASE.ok"
