#!/usr/bin/env bash
# bench/profile.sh: CPU profiles, execution traces and counts of Raksha's full
# backup, clustered incremental (--changed-extents) and restore on the bench
# image (bench/PROFILE.md says how to read them). Needs the cached image of
# bench/run.sh (or makes it). Knobs: BENCH_SIZE (4G), BENCH_SEED, PROFILE_DIR
# (bench/work/profile), RAKSHA_BIN, PROFILE_TRACE=1 (also execution traces,
# which cost some CPU themselves).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_SEED=${BENCH_SEED:-20251123}
OUT=${PROFILE_DIR:-$ROOT/bench/work/profile}
WORK=$ROOT/bench/work
BT=$WORK/bin/benchtool
RAKSHA=${RAKSHA_BIN:-$WORK/bin/raksha-profile}
BASE=$WORK/images/base-v1-$BENCH_SIZE.img

go build -o "$BT" ./bench/cmd/benchtool
[[ -n ${RAKSHA_BIN:-} ]] || go build -o "$RAKSHA" ./starter
[[ -f $BASE.ok ]] || bench/make-image.sh "$BASE" "$BENCH_SIZE" "$BT"

rm -rf "$OUT"
mkdir -p "$OUT"
IMG=$OUT/disk.img REPO=$OUT/repo
cp --sparse=always "$BASE" "$IMG"
export RAKSHA_PASSWORD=bench-password XDG_CACHE_HOME=$OUT/cache

# run NAME CMD...: CPU, blocking and allocation profiles, execution trace
# and /usr/bin/time -v of one command.
run() {
	local name=$1
	shift
	sync
	local env=(RAKSHA_CPUPROFILE="$OUT/$name.cpu" RAKSHA_BLOCKPROFILE="$OUT/$name.block" RAKSHA_MEMPROFILE="$OUT/$name.mem")
	[[ ${PROFILE_TRACE:-1} == 1 ]] && env+=(RAKSHA_TRACE="$OUT/$name.trace")
	env "${env[@]}" /usr/bin/time -v -o "$OUT/$name.time" "$RAKSHA" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
	printf '%-12s wall %s  user %s  sys %s  maxrss %s KiB\n' "$name" \
		"$(awk -F': ' '/Elapsed/ { print $2 }' "$OUT/$name.time")" \
		"$(awk -F': ' '/User time/ { print $2 }' "$OUT/$name.time")" \
		"$(awk -F': ' '/System time/ { print $2 }' "$OUT/$name.time")" \
		"$(awk -F': ' '/Maximum resident/ { print $2 }' "$OUT/$name.time")"
}

"$RAKSHA" repo init --repo "file://$REPO" >/dev/null
"$BT" warm "$IMG"
run full disk backup --repo "file://$REPO" --label vm=bench --progress none -f json "$IMG"
id=$("$BT" json "$OUT/full.out" id)
"$BT" mutate -pattern clustered -seed "$BENCH_SEED" -extents "$OUT/extents.json" "$IMG" >/dev/null
"$BT" warm "$IMG"
run incr disk backup --repo "file://$REPO" --label vm=bench --progress none -f json \
	--changed-extents "$OUT/extents.json" --base "$id" "$IMG"
id=$("$BT" json "$OUT/incr.out" id)
find "$REPO" -type f -print0 | xargs -0 -r "$BT" warm
run restore disk restore --progress none -f json --repo "file://$REPO" "$id" "$OUT/restored.img"
"$BT" cmp "$IMG" "$OUT/restored.img" && echo "restore identical"
rm -f "$OUT/restored.img"
