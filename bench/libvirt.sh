#!/usr/bin/env bash
# bench/libvirt.sh: Raksha reading a guest disk through libvirt's pull-mode
# backup export (libvirt:DOMAIN/TARGET: checkpoint, NBD export, dirty-bitmap
# extents), side by side with the file path of the same image (the raw image
# file read with SEEK_DATA/SEEK_HOLE; the incremental with --changed-extents
# of exactly the ranges written). Goal: the export path at >= 70% of the
# file path's throughput, full and incremental.
#
# The bench image (bench/make-image.sh, the main bench's 4 GiB ext4 image)
# is converted to qcow2 and attached as an IDE disk of a libvirt domain that
# boots the lab guest (scripts/build-guest.sh; TCG). The guest has no IDE
# driver, so nothing in it touches the disk: the changes are written from
# the host through QEMU's block layer (HMP qemu-io, so the dirty bitmaps
# record them), the same bytes at the same offsets as in the raw file.
# Restores of the libvirt backups are compared byte for byte with the file.
#
# Usage: bench/libvirt.sh      (make bench runs it after bench/run.sh; needs root)
# Knobs: BENCH_SIZE=4G, BENCH_SEED=20251123 (clustered change, as run.sh),
#        BENCH_ROUNDS=3, BENCH_RESULTS (default bench/RESULTS-libvirt.md at 4G),
#        BENCH_TIMEOUT=1200.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_SEED=${BENCH_SEED:-20251123}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1200}
IMAGE_VERSION=1 # as in run.sh
W=$ROOT/bench/work/libvirt
BIN=$ROOT/bench/work/bin
BT=$BIN/benchtool
BASE=$ROOT/bench/work/images/base-v$IMAGE_VERSION-$BENCH_SIZE.img
if [[ -z ${BENCH_RESULTS:-} ]]; then
	if [[ $BENCH_SIZE == 4G ]]; then BENCH_RESULTS=$ROOT/bench/RESULTS-libvirt.md; else BENCH_RESULTS=$W/RESULTS-libvirt-$BENCH_SIZE.md; fi
fi
log() { printf '[libvirt.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "libvirt.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (libvirt's system instance)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing (Debian package time)"
scripts/libvirtd-up.sh >&2 || die "libvirtd does not start (scripts/libvirtd-up.sh)"
rm -rf "$W"
mkdir -p "$W/logs" "$W/repos" "$BIN"
log "building benchtool and raksha"
go build -o "$BT" ./bench/cmd/benchtool
go build -o "$BIN/raksha" ./starter
RAKSHA=$BIN/raksha
SIZE_BYTES=$("$BT" size "$BENCH_SIZE")
bench/make-image.sh "$BASE" "$BENCH_SIZE" "$BT" || die "could not make the image"
GUEST=$(scripts/build-guest.sh) || die "scripts/build-guest.sh failed"
KERNEL=$(sed -n 's/^kernel=//p' <<<"$GUEST")
INITRD=$(sed -n 's/^initrd=//p' <<<"$GUEST")

DOM=raksha-bench-$$
RES=$W/results.jsonl
export RAKSHA_PASSWORD=bench
cleanup() {
	virsh -q destroy "$DOM" >/dev/null 2>&1 || true
	virsh -q undefine "$DOM" --checkpoints-metadata >/dev/null 2>&1 || true
	rm -rf "$W/repos" "$W/img" "$W/work" "$W/locks"
}
trap cleanup EXIT

# measure NAME TOOL OP REPODIR SOURCE -- CMD...: one row (REPODIR's growth
# is the bytes stored); SOURCE, the image file the command reads, is warmed
# in the page cache first, as in the main bench.
measure() {
	local name=$1 tool=$2 op=$3 repo=$4 src=$5
	shift 6
	sync
	"$BT" warm "$src"
	log "round $ROUND: $name"
	"$BT" measure -results "$RES" -round "$ROUND" -name "$name" -tool "$tool" -op "$op" -image libvirt -size "$SIZE_BYTES" -repo "$repo" \
		-timeout "${BENCH_TIMEOUT}s" -log "$W/logs/$name.$ROUND.log" -stdout "$W/logs/$name.$ROUND.out" -- "$@" ||
		die "$name failed: $(tail -n 3 "$W/logs/$name.$ROUND.log")"
}

# qemu_write FILE: write the ranges of extents FILE, with the bytes the raw
# image holds there, into the domain's disk through QEMU's block layer.
qemu_write() {
	local n=0 off len piece
	while read -r off len; do
		piece=$W/img/piece
		dd if="$W/img/raw.img" of="$piece" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none
		out=$(virsh qemu-monitor-command --hmp "$DOM" "qemu-io -d ide0-0-0 \"write -s $piece $off $len\"")
		[[ -z ${out//[$'\r\n ']/} ]] || die "qemu-io write at $off: $out"
		n=$((n + len))
	done < <(python3 -c 'import json,sys; [print(e["offset"], e["length"]) for e in json.load(open(sys.argv[1]))]' "$1")
	log "wrote $n bytes through qemu-io"
}

for ROUND in $(seq 1 "$BENCH_ROUNDS"); do
	rm -rf "$W/img" "$W/repos" "$W/work" "$W/locks"
	mkdir -p "$W/img" "$W/repos" "$W/work" "$W/locks"
	log "round $ROUND: copying the image (raw, sparse) and converting it to qcow2"
	cp --sparse=always "$BASE" "$W/img/raw.img"
	qemu-img convert -f raw -O qcow2 "$BASE" "$W/img/disk.qcow2"
	cat >"$W/img/dom.xml" <<XML
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$KERNEL</kernel><initrd>$INITRD</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 raksha.writer=0</cmdline></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$W/img/disk.qcow2'/><target dev='hda' bus='ide'/></disk>
    <serial type='file'><source path='$W/img/console.log'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
XML
	virsh -q define "$W/img/dom.xml" >/dev/null
	virsh -q start "$DOM" >/dev/null
	# Let the guest finish booting (TCG takes a core meanwhile) before
	# anything is measured; idle, it costs both paths alike.
	for _ in $(seq 240); do grep -q RAKSHA-READY "$W/img/console.log" 2>/dev/null && break; sleep 0.5; done
	grep -q RAKSHA-READY "$W/img/console.log" || die "the bench guest did not boot (see $W/img/console.log)"
	RF=$W/repos/file RL=$W/repos/libvirt
	"$RAKSHA" --repo "file://$RF" repo init >/dev/null
	"$RAKSHA" --repo "file://$RL" repo init >/dev/null
	LV=(--lock-dir "$W/locks" --work-dir "$W/work" --no-freeze)

	measure full-file raksha full "$RF" "$W/img/raw.img" -- "$RAKSHA" --repo "file://$RF" --progress none -f json disk backup --label b=file "$W/img/raw.img"
	measure full-libvirt raksha full "$RL" "$W/img/disk.qcow2" -- "$RAKSHA" --repo "file://$RL" --progress none -f json disk backup --label b=libvirt "${LV[@]}" "libvirt:$DOM/hda"

	change=$("$BT" mutate -pattern clustered -seed "$BENCH_SEED" -extents "$W/img/extents.json" "$W/img/raw.img")
	log "round $ROUND: $change"
	qemu_write "$W/img/extents.json"

	measure incr-file raksha incr "$RF" "$W/img/raw.img" -- "$RAKSHA" --repo "file://$RF" --progress none -f json disk backup --label b=file --changed-extents "$W/img/extents.json" "$W/img/raw.img"
	measure incr-libvirt raksha incr "$RL" "$W/img/disk.qcow2" -- "$RAKSHA" --repo "file://$RL" --progress none -f json disk backup --label b=libvirt "${LV[@]}" "libvirt:$DOM/hda"
	mode=$("$BT" json "$W/logs/incr-libvirt.$ROUND.out" mode)
	[[ $mode == incremental ]] || die "the libvirt incremental was $mode: $("$BT" json "$W/logs/incr-libvirt.$ROUND.out" reason)"

	log "round $ROUND: verifying the restore of the libvirt incremental against the raw image"
	id=$("$BT" json "$W/logs/incr-libvirt.$ROUND.out" id)
	"$RAKSHA" --repo "file://$RL" --progress none disk restore "$id" "$W/img/restored.img" >/dev/null
	if "$BT" cmp "$W/img/raw.img" "$W/img/restored.img" 2>"$W/logs/cmp.$ROUND.txt"; then VERIFY="identical"; else VERIFY="DIFFERS: $(cat "$W/logs/cmp.$ROUND.txt")"; die "restore $VERIFY"; fi
	names=$(virsh -q checkpoint-list "$DOM" --name 2>/dev/null | tr -d ' \n')
	[[ -z $names ]] || die "checkpoint metadata left in libvirt: $names"
	virsh -q destroy "$DOM" >/dev/null
	virsh -q undefine "$DOM" >/dev/null || die "undefine failed (checkpoint metadata left?)"
done

python3 - "$RES" "$BENCH_RESULTS" "$SIZE_BYTES" "$BENCH_ROUNDS" "$VERIFY" "$change" \
	"$(nproc)" "$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)" \
	"$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$(go version | awk '{ print $3 }')" \
	"$(libvirtd --version | awk '{ print $NF }')" "$(qemu-system-x86_64 --version | awk 'NR == 1 { print $4 }')" <<'PY'
import json, sys, datetime, statistics
(res, out, size, rounds, verify, change, nproc, cpu, mem, kernel, gover, lvv, qv) = sys.argv[1:]
size = int(size)
rows = [json.loads(l) for l in open(res)]
by = {}
for r in rows:
    by.setdefault(r["name"], []).append(r)
def med(name, key): return statistics.median(r[key] for r in by[name])
def stat(name, key):
    vals = []
    for r in by[name]:
        try: vals.append(json.load(open(r["log"][:-4] + ".out"))["stats"][key])
        except Exception: pass
    return statistics.median(vals) if vals else None
def mb(n): return f"{n/1e6:,.0f} MB" if n >= 1e6 else f"{n/1e3:,.0f} kB"
what = {"full-file": "full backup, file path (raw image, SEEK_DATA)", "full-libvirt": "full backup, libvirt pull export (NBD)",
        "incr-file": "incremental, file path (`--changed-extents`)", "incr-libvirt": "incremental, libvirt export (dirty-bitmap extents)"}
L = ["# Raksha through libvirt's pull-mode export: benchmark results\n",
     f"Written by `bench/libvirt.sh` on {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M')} UTC. Image: the main bench's ext4 image "
     f"({size/2**30:g} GiB, ~35% real files, the rest holes), as a raw file (the file path) and as a qcow2 IDE disk of a running libvirt "
     f"domain (TCG) that the guest does not use; then the clustered change of the main bench ({change.split(': ',1)[-1]}) written to both, "
     "to the domain through QEMU's block layer (qemu-io) so that its dirty bitmaps record it. Both paths use the same Raksha binary, "
     "4 MiB chunks, a local repository; the source image warmed in the page cache before each command. The libvirt rows include the checkpoint, the backup job "
     "(begin, abort) and the NBD reads.\n",
     f"Machine: {nproc} cores ({cpu}), {mem} RAM, Linux {kernel}, {gover}, libvirt {lvv}, QEMU {qv}. Medians of {rounds} rounds.\n",
     "| operation | wall s (min–max) | MB/s | CPU s | read (Raksha stats) | peak RSS | status |",
     "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
for name in ["full-file", "full-libvirt", "incr-file", "incr-libvirt"]:
    if name not in by: continue
    w = med(name, "wall_s"); ws = [r["wall_s"] for r in by[name]]
    rd = stat(name, "bytes_read")
    st = ",".join(sorted(set(r["status"] for r in by[name])))
    L.append(f"| {what[name]} | {w:.2f} ({min(ws):.2f}–{max(ws):.2f}) | {size/1e6/w:,.0f} | {med(name, 'cpu_s'):.2f} | "
             f"{mb(rd) if rd is not None else '—'} | {max(r['maxrss_kb'] for r in by[name])/1024:.0f} MiB | {st} |")
L.append("")
for kind in ["full", "incr"]:
    f, l = med(f"{kind}-file", "wall_s"), med(f"{kind}-libvirt", "wall_s")
    ratio = f / l
    L.append(f"- **{'Full' if kind == 'full' else 'Incremental'}**: the libvirt export at {100*ratio:.0f}% of the file path's throughput "
             f"({l:.2f} s vs {f:.2f} s): goal ≥ 70%: **{'met' if ratio >= 0.7 else 'not met'}**.")
L.append(f"- Restore of the last libvirt incremental vs the raw image: {verify}; no checkpoint metadata left in libvirt after any backup; the domain undefined without flags.")
L.append("- Raw logs: bench/work/libvirt/logs, rows: bench/work/libvirt/results.jsonl.\n")
open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
log "report: $BENCH_RESULTS"
