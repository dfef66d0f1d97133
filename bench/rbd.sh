#!/usr/bin/env bash
# bench/rbd.sh: Raksha on Ceph RBD, side by side with `rbd export`/`export-diff`
# and restic reading `rbd export` output from stdin, in one run, on a throwaway
# single-node cluster (scripts/ceph-up.sh, bluestore on a sparse file).
#
# Usage: bench/rbd.sh            (run by hand; not part of the default `make bench`)
# Knobs:
#   BENCH_SIZE=4G       image size; the cached main-bench image bench/work/images/base-v1-SIZE.img
#                       is imported (run bench/run.sh once at that size to make it)
#   BENCH_SEED=1        seed of the change pattern
#   BENCH_PERCENT=1     percent of 4 KiB blocks rewritten before the incremental backups
#   BENCH_RESULTS=...   report path (default bench/RESULTS-rbd.md at 4G, else bench/work/rbd/RESULTS-rbd-SIZE.md)
#   BENCH_KEEP=1        keep the cluster and the work files
#   BENCH_TIMEOUT=1200  seconds before a command is killed
#   RAKSHA_BIN          a raksha built with Ceph support (default: built here with -tags ceph,pacific)
# Needs: the Ceph packages of scripts/ceph-up.sh, librbd-dev/librados-dev (to build), python3,
# /usr/bin/time, bin/restic (bench/build-peers.sh restic).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_SEED=${BENCH_SEED:-1}
BENCH_PERCENT=${BENCH_PERCENT:-1}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1200}
IMAGE_VERSION=1 # as in run.sh
W=$ROOT/bench/work/rbd
BIN=$ROOT/bench/work/bin
BT=$BIN/benchtool
RESTIC=$ROOT/bin/restic
BASE=$ROOT/bench/work/images/base-v$IMAGE_VERSION-$BENCH_SIZE.img
if [[ -z ${BENCH_RESULTS:-} ]]; then
	if [[ $BENCH_SIZE == 4G ]]; then BENCH_RESULTS=$ROOT/bench/RESULTS-rbd.md; else BENCH_RESULTS=$W/RESULTS-rbd-$BENCH_SIZE.md; fi
fi

log() { printf '[rbd.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "rbd.sh: $*" >&2; exit 1; }

[[ -f $BASE ]] || die "no cached image $BASE: run 'BENCH_SIZE=$BENCH_SIZE bench/run.sh' once (it makes and caches it)"
[[ -x $RESTIC ]] || bench/build-peers.sh restic || die "restic does not build (bench/build-peers.sh restic)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing (Debian package time)"
test -e /usr/include/rbd/librbd.h || die "librbd-dev is not installed: raksha cannot be built with Ceph support"

rm -rf "$W"
mkdir -p "$W/logs" "$W/repos" "$BIN"
log "building benchtool and raksha (-tags ceph,pacific)"
go build -o "$BT" ./bench/cmd/benchtool
if [[ -z ${RAKSHA_BIN:-} ]]; then
	go build -tags ceph,pacific -o "$BIN/raksha-ceph" ./starter
	RAKSHA_BIN=$BIN/raksha-ceph
fi
SIZE_BYTES=$("$BT" size "$BENCH_SIZE")

# ---- cluster: a free block of ports, bluestore on a 10 GiB sparse file (ceph-up.sh)
free_base() {
	local used b p ok
	used=$(ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u)
	for _ in $(seq 200); do
		b=$((30000 + RANDOM % 25000))
		ok=1
		for p in $(seq "$b" $((b + 25))); do grep -qx "$p" <<<"$used" && { ok=0; break; }; done
		((ok)) && { echo "$b"; return; }
	done
	die "no free port block"
}
PB=$(free_base)
CD=${TMPDIR:-/tmp}/rk-rbdbench-$$
cleanup() {
	if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept: cluster $CD (stop: scripts/ceph-down.sh $CD), files $W"; return; fi
	scripts/ceph-down.sh "$CD" >/dev/null 2>&1 || true
	rm -rf "$W/export" "$W/repos"
}
trap cleanup EXIT
log "starting the cluster in $CD"
OSD_STORE=bluestore WITH_RGW=0 WITH_MGR=0 CEPHLAB_MON_PORT=$PB CEPHLAB_RGW_PORT=$((PB + 1)) \
	CEPHLAB_MSGR_PORT_MIN=$((PB + 2)) CEPHLAB_MSGR_PORT_MAX=$((PB + 25)) \
	scripts/ceph-up.sh "$CD" >"$W/logs/ceph-up.log" 2>&1 || { cat "$W/logs/ceph-up.log" >&2; die "ceph-up.sh failed"; }
export CEPH_CONF=$CD/ceph.conf
export RAKSHA_PASSWORD=bench RESTIC_PASSWORD=bench
export XDG_CACHE_HOME=$W/cache RESTIC_CACHE_DIR=$W/cache/restic
RES=$W/results.jsonl
REPO=$W/repos/raksha
REPO_SMALL=$W/repos/raksha-small
SMALL_CHUNK=${BENCH_RBD_SMALL_CHUNK:-256KiB}
RREPO=$W/repos/restic
mkdir -p "$W/export"

# measure NAME TOOL OP [REPODIR] -- CMD...: one row (REPODIR: its growth is the bytes stored)
measure() {
	local name=$1 tool=$2 op=$3 rflag=()
	shift 3
	[[ $1 != -- ]] && { rflag=(-repo "$1"); shift; }
	shift
	sync
	log "$name"
	"$BT" measure -results "$RES" -name "$name" -tool "$tool" -op "$op" -image rbd -size "$SIZE_BYTES" "${rflag[@]}" \
		-timeout "${BENCH_TIMEOUT}s" -log "$W/logs/$name.log" -stdout "$W/logs/$name.out" -- "$@" ||
		log "$name FAILED: $(tail -n 3 "$W/logs/$name.log")"
}

log "importing $BASE as rbd/bench and snapshotting s1"
rbd import --image-format 2 "$BASE" rbd/bench >"$W/logs/import-base.log" 2>&1
rbd snap create rbd/bench@s1 >/dev/null
"$RAKSHA_BIN" --repo "file://$REPO" repo init >/dev/null
"$RAKSHA_BIN" --repo "file://$REPO_SMALL" repo init --chunk-size "$SMALL_CHUNK" >/dev/null
"$RESTIC" --repo "$RREPO" init >/dev/null

# ---- full backups of bench@s1
measure full-raksha raksha full "$REPO" -- "$RAKSHA_BIN" --repo "file://$REPO" --progress none -f json disk backup rbd:rbd/bench@s1
measure full-raksha-small raksha full "$REPO_SMALL" -- "$RAKSHA_BIN" --repo "file://$REPO_SMALL" --progress none -f json disk backup rbd:rbd/bench@s1
measure full-rbd-export rbd-export full -- rbd export --no-progress rbd/bench@s1 "$W/export/s1.img"
measure full-restic-stdin restic full "$RREPO" -- bash -o pipefail -c \
	"rbd export --no-progress rbd/bench@s1 - | '$RESTIC' --repo '$RREPO' backup --stdin --stdin-filename bench.img --no-scan -q"

# ---- change: BENCH_PERCENT% of the 4 KiB blocks rewritten with random bytes (seeded), as an
# `rbd import-diff` stream (no kernel rbd, no QEMU rbd driver here), then snapshot s2
log "rewriting $BENCH_PERCENT% of the 4 KiB blocks (seed $BENCH_SEED)"
python3 - "$SIZE_BYTES" "$BENCH_PERCENT" "$BENCH_SEED" "$W/change.diff" "$W/change.json" <<'PY'
import json, random, struct, sys
size, pct, seed, out, ext = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
blk = 4096
n = int(size // blk * pct / 100)
rng = random.Random(seed)
blocks = sorted(rng.sample(range(size // blk), n))
with open(out, "wb") as f:
    f.write(b"rbd diff v1\n")
    f.write(b"s" + struct.pack("<Q", size))
    for b in blocks:
        f.write(b"w" + struct.pack("<QQ", b * blk, blk) + rng.randbytes(blk))
    f.write(b"e")
json.dump([{"offset": b * blk, "length": blk} for b in blocks], open(ext, "w"))
print(n, "blocks", file=sys.stderr)
PY
rbd import-diff --no-progress "$W/change.diff" rbd/bench >"$W/logs/import-diff-change.log" 2>&1
rbd snap create rbd/bench@s2 >/dev/null
CHANGED_BYTES=$(rbd diff --from-snap s1 rbd/bench@s2 --format json | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin)))')

# ---- incremental backups of bench@s2
measure incr-raksha raksha incr "$REPO" -- "$RAKSHA_BIN" --repo "file://$REPO" --progress none -f json disk backup --base-snapshot s1 rbd:rbd/bench@s2
measure incr-raksha-small raksha incr "$REPO_SMALL" -- "$RAKSHA_BIN" --repo "file://$REPO_SMALL" --progress none -f json disk backup --base-snapshot s1 rbd:rbd/bench@s2
measure incr-rbd-export-diff rbd-export-diff incr -- rbd export-diff --no-progress --from-snap s1 rbd/bench@s2 "$W/export/s1-s2.diff"
measure incr-restic-stdin restic incr "$RREPO" -- bash -o pipefail -c \
	"rbd export --no-progress rbd/bench@s2 - | '$RESTIC' --repo '$RREPO' backup --stdin --stdin-filename bench.img --no-scan -q"

# ---- restores of s2 into new images
INC_ID=$("$BT" json "$W/logs/incr-raksha.out" id)
measure restore-raksha raksha restore -- "$RAKSHA_BIN" --repo "file://$REPO" --progress none -f json disk restore "$INC_ID" rbd:rbd/restored-raksha
measure restore-rbd-import rbd-import restore -- rbd import --no-progress "$W/export/s1.img" rbd/restored-rbd
rbd snap create rbd/restored-rbd@s1 >/dev/null
measure restore-rbd-import-diff rbd-import-diff restore -- rbd import-diff --no-progress "$W/export/s1-s2.diff" rbd/restored-rbd

log "verifying the restored images against bench@s2 (sha256 of rbd export)"
want=$(rbd export --no-progress rbd/bench@s2 - | sha256sum | cut -c1-64)
VERIFY=""
for img in restored-raksha restored-rbd; do
	got=$(rbd export --no-progress rbd/$img - | sha256sum | cut -c1-64)
	if [[ $got == "$want" ]]; then VERIFY+="$img identical; "; else VERIFY+="$img DIFFERS; "; fi
done
log "$VERIFY"

# ---- report
du_export() { stat -c %s "$1" 2>/dev/null || echo 0; }
python3 - "$RES" "$BENCH_RESULTS" "$SMALL_CHUNK" "$SIZE_BYTES" "$CHANGED_BYTES" "$VERIFY" "$(du_export "$W/export/s1.img")" "$(du_export "$W/export/s1-s2.diff")" \
	"$(nproc)" "$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)" \
	"$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$(go version | awk '{ print $3 }')" \
	"$(ceph --version | awk '{ print $3, $5 }')" "$("$RESTIC" version | awk '{ print $2 }')" "$BENCH_PERCENT" "$BENCH_SEED" <<'PY'
import json, sys, datetime
(res, out, small, size, changed, verify, exp_full, exp_diff, nproc, cpu, mem, kernel, gover, cephv, resticv, pct, seed) = sys.argv[1:]
size, changed = int(size), int(changed)
rows = [json.loads(l) for l in open(res)]
def mb(n): return f"{n/1e6:,.0f} MB" if n >= 1e6 else f"{n/1e3:,.0f} kB"
tool_read = {}
for r in rows:
    out_path = r.get("log", "")[:-4] + ".out" if r.get("log", "").endswith(".log") else ""
    if r["tool"] == "raksha" and r["status"] == "ok" and r["op"] != "restore":
        try:
            tool_read[r["name"]] = json.load(open(out_path))["stats"]["bytes_read"]
        except Exception:
            pass
produced = {"full-rbd-export": int(exp_full), "incr-rbd-export-diff": int(exp_diff)}
what = {
    "full-raksha": "Raksha full backup of bench@s1",
    "full-raksha-small": f"Raksha full backup, {small} chunks",
    "incr-raksha-small": f"Raksha incremental, {small} chunks",
    "full-rbd-export": "`rbd export` bench@s1 to a file",
    "full-restic-stdin": "`rbd export bench@s1 - \\| restic backup --stdin`",
    "incr-raksha": "Raksha incremental, `--base-snapshot s1`",
    "incr-rbd-export-diff": "`rbd export-diff --from-snap s1` to a file",
    "incr-restic-stdin": "`rbd export bench@s2 - \\| restic backup --stdin`",
    "restore-raksha": "Raksha restore of the s2 backup into a new image",
    "restore-rbd-import": "`rbd import` of the s1 export into a new image",
    "restore-rbd-import-diff": "then `rbd import-diff` of the s1→s2 diff",
}
L = []
L.append("# Raksha on Ceph RBD: benchmark results\n")
L.append(f"Written by `bench/rbd.sh` on {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M')} UTC. "
         f"Image: the main bench's ext4 image ({size/2**30:g} GiB, ~35% real files, the rest holes) imported with "
         f"`rbd import` into a single-node throwaway cluster (scripts/ceph-up.sh: 1 mon, 1 bluestore OSD on a "
         f"sparse file on the same disk, size 1, no mgr), snapshot s1; then {pct}% of its 4 KiB blocks rewritten "
         f"with random bytes (seed {seed}; applied as an `rbd import-diff` stream) and snapshot s2. "
         f"The RBD snapshot diff s1→s2 covers {mb(changed)} ({changed} bytes).\n")
L.append(f"Machine: {nproc} cores ({cpu}), {mem} RAM, Linux {kernel}, {gover}, Ceph {cephv}, restic {resticv}. "
         "The cores are shared with other work; one sample per row.\n")
L.append("| operation | wall s | MB/s | CPU s | read from RBD (Raksha stats) | read (kernel rchar) | output / stored | peak RSS | status |")
L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for r in rows:
    w = r["wall_s"]
    rd = tool_read.get(r["name"])
    rd_s = mb(rd) if rd is not None else "—"
    outb = produced.get(r["name"])
    o = mb(outb) + " file" if outb is not None else ("—")
    if r.get("stored_bytes") is not None:
        o = f"{mb(r['stored_bytes'])} repo growth"
    L.append(f"| {what.get(r['name'], r['name'])} | {w:.1f} | {size/1e6/w if w else 0:,.0f} | {r['cpu_s']:.1f} | {rd_s} | {mb(r['rchar'])} | {o} | "
             f"{r['maxrss_kb']/1024:.0f} MiB | {r['status']} {r.get('note','')} |")
L.append("")
L.append(f"Restores verified (sha256 of `rbd export` of each restored image vs bench@s2): {verify}\n")
L.append("## How to read it\n")
L.append("- **MB/s** is the image size (10^6 bytes) / wall time: the speed a user sees for the whole disk.")
L.append("- **read (kernel rchar)**: `benchtool measure`, as in the main bench: every byte the command (and its children) got "
         "from read(2)-family calls, which here includes librados' socket reads from the OSD: what really crossed the wire. "
         "librbd reads sparsely: unwritten parts of an object come back as zeros without being sent, so a read of a "
         "mostly-empty range costs little (export-diff's output is mostly such zeros). restic's figure adds the whole "
         "`rbd export` stream it reads through the pipe (the full disk, every time); `rbd import` reads its export file. "
         "**read from RBD** is Raksha's own `bytes_read`: the bytes it asked the snapshot for, zeros included.")
L.append("- **output / stored**: the export file's apparent size, or the growth of the Raksha/restic repository (after dedup and compression).")
L.append("- Raksha's incremental reads whole the chunks that the snapshot diff touches. 1% of 4 KiB blocks spread at random "
         "over the disk touches every 4 MiB chunk (about 10 writes per chunk), and writes into holes create RADOS objects "
         "whose diff runs from the object's start (see the diff size above): the worst case for a store of large chunks; "
         f"the {small}-chunk rows show how much smaller chunks help. Raw logs: bench/work/rbd/logs, rows: bench/work/rbd/results.jsonl.")
open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
log "report: $BENCH_RESULTS"
