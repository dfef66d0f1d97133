#!/usr/bin/env bash
# Raksha benchmark: Raksha vs restic vs kopia on one ext4 disk image.
# `make bench` runs this script. See bench/README.md for what is measured.
#
# Knobs (environment):
#   BENCH_SIZE=4G          size of the ext4 image (about 35% of it is real files)
#   BENCH_SEED=20251123    seed of the change patterns (same changes on every run)
#   BENCH_CHUNKS="1MiB 256KiB"  extra Raksha chunk sizes for the scattered series
#                          (the default 4 MiB is always measured); "" = none
#   BENCH_BIG=1            also measure Raksha on a large sparse image (0 = skip)
#   BENCH_BIG_SIZE=64G     size of that image; BENCH_BIG_DATA=320M of real data in it
#   BENCH_TOOLS="raksha restic kopia"  which tools to run (others get "skipped" rows)
#   BENCH_RESULTS=FILE     where the markdown report goes (default bench/RESULTS.md
#                          at the default size, bench/work/RESULTS-<size>.md otherwise)
#   BENCH_ROUNDS=5         rounds of the whole sequence; the report gives medians and spread
#   BENCH_TIMEOUT=1200     seconds after which a measured command is killed (row: failed)
#   BENCH_KEEP=0           1 = keep repositories and images of the run in bench/work/run
#   RAKSHA_BIN=PATH        use this raksha binary (default: build ./starter into bench/work/bin)
#   KOPIA_COMPRESSION=zstd compression policy set on the kopia repository
#   RESTIC_VERSION, KOPIA_VERSION  pins for bench/build-peers.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_SEED=${BENCH_SEED:-20251123}
BENCH_CHUNKS=${BENCH_CHUNKS-1MiB 256KiB}
BENCH_BIG=${BENCH_BIG:-1}
BENCH_BIG_SIZE=${BENCH_BIG_SIZE:-64G}
BENCH_BIG_DATA=${BENCH_BIG_DATA:-320M}
BENCH_TOOLS=${BENCH_TOOLS:-raksha restic kopia}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_ROUNDS=${BENCH_ROUNDS:-5}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1200}
KOPIA_COMPRESSION=${KOPIA_COMPRESSION:-zstd}
IMAGE_VERSION=1 # bump when the image recipe changes: cached images are keyed by it

WORK=$ROOT/bench/work
BT=$WORK/bin/benchtool
RUN=$WORK/run
LOGS=$RUN/logs
RESULTS=$RUN/results.jsonl
if [[ -z ${BENCH_RESULTS:-} ]]; then
	if [[ $BENCH_SIZE == 4G ]]; then
		BENCH_RESULTS=$ROOT/bench/RESULTS.md
	else
		BENCH_RESULTS=$WORK/RESULTS-$BENCH_SIZE.md
	fi
fi

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	printf 'bench: error: %s\n' "$*" >&2
	exit 1
}

# ---------------------------------------------------------------- prerequisites
mkdir -p "$WORK"
# fd 9 holds the lock; the tools are started with it closed (9>&-), so that
# nothing they leave behind can keep holding it.
exec 9>"$WORK/.lock"
if command -v flock >/dev/null && ! flock -n 9; then
	die "another bench/run.sh is running (lock $WORK/.lock)"
fi

PATH=$PATH:/usr/sbin:/sbin
command -v go >/dev/null || die "go is not on PATH"
if [[ ! -x /usr/bin/time ]]; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		log "installing GNU time (Debian package 'time') for /usr/bin/time -v"
		apt-get install -y -q time >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null; } ||
			die "could not install the Debian package 'time'"
	else
		die "/usr/bin/time is missing: install the Debian package 'time'"
	fi
fi
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing: install the Debian package 'e2fsprogs'"

log "building benchtool"
go build -o "$BT" ./bench/cmd/benchtool || die "could not build bench/cmd/benchtool"
SIZE_BYTES=$("$BT" size "$BENCH_SIZE") || die "bad BENCH_SIZE=$BENCH_SIZE"
BIG_BYTES=$("$BT" size "$BENCH_BIG_SIZE") || die "bad BENCH_BIG_SIZE=$BENCH_BIG_SIZE"

# Disk space: cached image + working copy + repositories + one restore, all
# about the size of the real data in the image (35%), plus slack.
need_kb=$((SIZE_BYTES / 1024 * 35 / 100 * 9 / 1 + 2 * 1024 * 1024))
free_kb=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
((free_kb > need_kb)) || die "not enough free disk under $WORK: $((free_kb / 1024)) MiB free, about $((need_kb / 1024)) MiB needed"

want_tool() { [[ " $BENCH_TOOLS " == *" $1 "* ]]; }

# Chains: one repository each; a failed step marks its chain broken and the
# later steps of that chain are recorded as skipped (nothing is dropped).
declare -A TOOLBAD=() BROKEN=() ID=()
PROBLEMS=() CHANGES=()

# ------------------------------------------------------------------- binaries
RESTIC=$ROOT/bin/restic
KOPIA=$ROOT/bin/kopia
# The bench builds its own copy of the CLI (not bin/raksha, which `make build`
# may have built with other tags) unless RAKSHA_BIN names one.
RAKSHA=${RAKSHA_BIN:-$WORK/bin/raksha}

if want_tool restic || want_tool kopia; then
	peers=()
	want_tool restic && peers+=(restic)
	want_tool kopia && peers+=(kopia)
	bench/build-peers.sh "${peers[@]}" 9>&- || true
fi
for t in restic kopia; do
	bin=$ROOT/bin/$t
	if ! want_tool $t; then
		TOOLBAD[$t]="not selected (BENCH_TOOLS)"
	elif [[ ! -x $bin ]]; then
		TOOLBAD[$t]="$t did not build (see bench/work/build-$t.log)"
		PROBLEMS+=("$t did not build from the module proxy with $(go env GOVERSION); its rows are marked skipped")
	fi
done
modver() { go version -m "$1" 2>/dev/null | awk -v m="$2" '!v && ($1 == "mod" || $1 == "dep") && $2 == m { v = $3 } END { if (v) print v }'; }
RESTIC_VER="not built" KOPIA_VER="not built"
[[ -x $RESTIC ]] && RESTIC_VER="restic $(modver "$RESTIC" github.com/restic/restic) ($(go version "$RESTIC" | awk '{ print $2 }'))"
[[ -x $KOPIA ]] && KOPIA_VER="kopia $(modver "$KOPIA" github.com/kopia/kopia) ($(go version "$KOPIA" | awk '{ print $2 }'))"

RAKSHA_VER="not built"
if ! want_tool raksha; then
	TOOLBAD[raksha]="not selected (BENCH_TOOLS)"
else
	if [[ -z ${RAKSHA_BIN:-} ]]; then
		log "building raksha (go build ./starter)"
		if ! go build -o "$RAKSHA" ./starter >"$WORK/build-raksha.log" 2>&1; then
			TOOLBAD[raksha]="raksha did not build: $(grep -m1 -v '^#' "$WORK/build-raksha.log" | cut -c1-150)"
			PROBLEMS+=("${TOOLBAD[raksha]}")
			rm -f "$RAKSHA"
		fi
	fi
	if [[ -z ${TOOLBAD[raksha]:-} ]]; then
		if [[ ! -x $RAKSHA ]]; then
			TOOLBAD[raksha]="no raksha binary at $RAKSHA"
		elif [[ $("$RAKSHA" disk backup --help 2>&1) != *--changed-extents* ]]; then
			# (the help text is captured whole: `| grep -q` closed the pipe
			# early, and with pipefail the check failed at random)
			PROBLEMS+=("\`raksha disk backup --help\` does not list --changed-extents; running anyway")
		fi
		RAKSHA_VER="git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet -- . ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
	fi
fi

# ---------------------------------------------------------------------- image
IMGDIR=$WORK/images
BASE=$IMGDIR/base-v$IMAGE_VERSION-$BENCH_SIZE.img
mkdir -p "$IMGDIR"
if [[ ! -f $BASE.ok ]]; then
	log "making the $BENCH_SIZE ext4 image (once; cached as $(basename "$BASE"))"
	bench/make-image.sh "$BASE" "$BENCH_SIZE" "$BT" || die "could not make the image"
fi
img_alloc=$(du -k "$BASE" | cut -f1)
IMG_DESC="$BENCH_SIZE ext4 image ($SIZE_BYTES bytes), $((img_alloc / 1024)) MiB allocated (real files of this machine: Go toolchain, /usr/lib, /usr/share), the rest holes"
log "image: $IMG_DESC"

# ------------------------------------------------------------------ run dir
cleanup() {
	local rc=$?
	if [[ $BENCH_KEEP != 1 && -d $RUN ]]; then
		rm -rf "$RUN/repos" "$RUN/restore" "$RUN/cache" "$RUN/disk.img" "$RUN/big.img" "$RUN/home"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$RUN"
mkdir -p "$LOGS"
: >"$RESULTS"
IMG=$RUN/disk.img
export RAKSHA_PASSWORD=bench-password RESTIC_PASSWORD=bench-password KOPIA_PASSWORD=bench-password
export KOPIA_CHECK_FOR_UPDATES=false

# ------------------------------------------------------------------ helpers
# step CHAIN NAME [benchtool measure flags] -- CMD...
# Measures CMD unless the chain is broken; on failure breaks the chain.
step() {
	local chain=$1 name=$2
	shift 2
	if [[ -n ${BROKEN[$chain]:-} ]]; then
		local flags=()
		while (($#)) && [[ $1 != -- ]]; do # measure's flags all take a value
			case $1 in -repo | -stdout | -time | -log) ;; *) flags+=("$1" "$2") ;; esac
			shift 2
		done
		"$BT" record -results "$RESULTS" -round "$ROUND" -name "$name" -status skipped -note "not run: ${BROKEN[$chain]}" "${flags[@]}"
		printf '  %-34s skipped (%s)\n' "$name" "${BROKEN[$chain]}" >&2
		return 1
	fi
	sync
	local f=$LOGS/${name//\//_}
	if ! "$BT" measure -results "$RESULTS" -round "$ROUND" -name "$name" -log "$f.log" -stdout "$f.out" -timeout "${BENCH_TIMEOUT}s" "$@" 9>&-; then
		BROKEN[$chain]="$name failed"
		return 1
	fi
}

# setup CHAIN DESCRIPTION CMD... : an unmeasured setup command (repo init).
setup() {
	local chain=$1 what=$2
	shift 2
	[[ -z ${BROKEN[$chain]:-} ]] || return 1
	if ! "$@" >"$LOGS/setup-$chain.log" 2>&1 9>&-; then
		BROKEN[$chain]="$what failed: $(tail -n1 "$LOGS/setup-$chain.log" | cut -c1-150)"
		printf '  %-34s %s\n' "$chain" "${BROKEN[$chain]}" >&2
		return 1
	fi
}

warm_image() { "$BT" warm "$1"; }
warm_dir() { find "$1" -type f -print0 2>/dev/null | xargs -0 -r "$BT" warm; }

raksha_repo() { echo "$RUN/repos/$1"; }

# raksha_backup CHAIN NAME OP PATTERN VARIANT CHUNK IMAGE_KIND IMAGE_FILE SIZE [extents]
raksha_backup() {
	local chain=$1 name=$2 op=$3 pattern=$4 variant=$5 chunk=$6 kind=$7 file=$8 size=$9 extents=${10:-}
	local repo
	repo=$(raksha_repo "$chain")
	local args=(disk backup --repo "file://$repo" --label vm=bench --progress none -f json)
	if [[ -n $extents ]]; then
		args+=(--changed-extents "$extents")
		[[ -n ${ID[$chain]:-} ]] && args+=(--base "${ID[$chain]}")
	fi
	warm_image "$file"
	if step "$chain" "$name" -tool raksha -op "$op" -pattern "$pattern" -variant "$variant" -chunk "$chunk" \
		-image "$kind" -size "$size" -repo "$repo" -- env XDG_CACHE_HOME="$RUN/cache/$chain" "$RAKSHA" "${args[@]}" "$file"; then
		local id
		if id=$("$BT" json "$LOGS/${name//\//_}.out" id 2>/dev/null) && [[ -n $id ]]; then
			ID[$chain]=$id
		else
			ID[$chain]=""
			"$BT" annotate -results "$RESULTS" -round "$ROUND" -name "$name" -set "note=no backup id in the JSON output"
		fi
	fi
}

# raksha_chain_init CHAIN [init flags]
raksha_chain_init() {
	local chain=$1
	shift
	[[ -n ${TOOLBAD[raksha]:-} ]] && BROKEN[$chain]=${TOOLBAD[raksha]}
	setup "$chain" "raksha repo init" env XDG_CACHE_HOME="$RUN/cache/$chain" \
		"$RAKSHA" repo init --repo "file://$(raksha_repo "$chain")" "$@" || true
}

# verify NAME SOURCE RESTORED: compare, annotate the record, delete the copy.
verify() {
	local name=$1 src=$2 out=$3
	if [[ ! -f $out ]]; then
		"$BT" annotate -results "$RESULTS" -round "$ROUND" -name "$name" -set "verified=MISSING" -set "status=failed" -set "note=restored file not found"
		log "  $name: restored file not found"
	elif "$BT" cmp "$src" "$out" 2>"$LOGS/${name//\//_}.cmp"; then
		"$BT" annotate -results "$RESULTS" -round "$ROUND" -name "$name" -set "verified=identical"
	else
		local why
		why=$(cat "$LOGS/${name//\//_}.cmp")
		"$BT" annotate -results "$RESULTS" -round "$ROUND" -name "$name" -set "verified=DIFFERS" -set "status=failed" -set "note=$why"
		log "  $name: restored image DIFFERS from the source: $why"
	fi
	rm -rf "$out"
	sync
}

kopia() { "$KOPIA" "${KOPIA_ARGS[@]}" "$@"; }

# floor_incr EXTENTS: the clustered incremental's floor on this machine,
# measured as the tools are, in the same round (benchtool incrfloor-run: a
# lean process doing only what any tool keeping Raksha's format and
# durability must do for the change in EXTENTS; bench/cmd/benchtool/incrfloor.go).
# After a pause as long as free page reporting's delay, so that it starts on
# cold memory too.
floor_incr() {
	[[ -n $FLOOR_SRC ]] || return 0
	local ext=$1
	local dir=$RUN/repos/floor
	rm -rf "$dir"
	mkdir -p "$dir"
	sleep 3
	warm_image "$FLOOR_SRC"
	step floor incr-clustered/floor -tool floor -op incr -pattern clustered -image main -size "$SIZE_BYTES" -repo "$dir" -- \
		"$BT" incrfloor-run -extents "$ext" "$FLOOR_SRC" "$dir/out" || true
	rm -rf "$dir"
}

# ------------------------------------------------------------------ one round
# A round is the whole sequence (full, clustered, scattered, restore, large
# image) in fresh repositories on a fresh copy of the image. Rounds repeat it
# (BENCH_ROUNDS) so the report can give medians and the spread: this machine's
# two cores are shared, and a single sample can be off by 2x.
bench_round() {
	BROKEN=() ID=()
	for t in "${!TOOLBAD[@]}"; do BROKEN[$t]=${TOOLBAD[$t]}; done
	LOGS=$RUN/logs/round-$ROUND
	rm -rf "$RUN/repos" "$RUN/restore" "$RUN/cache" "$RUN/home" "$IMG" "$RUN/big.img"
	mkdir -p "$RUN/repos" "$RUN/restore" "$RUN/cache" "$RUN/home" "$LOGS"
	cp --sparse=always "$BASE" "$IMG"
	export HOME=$RUN/home XDG_CACHE_HOME=$RUN/cache XDG_CONFIG_HOME=$RUN/home/.config
	export RESTIC_CACHE_DIR=$RUN/cache/restic
	KOPIA_CFG=$RUN/home/kopia.config
	KOPIA_ARGS=(--config-file "$KOPIA_CFG" --log-dir "$LOGS/kopia" --no-progress)

	# ------------------------------------------------------------------ phase 1: full backups
	log "round $ROUND/$BENCH_ROUNDS, phase 1: full backups of the $BENCH_SIZE image"
	raksha_chain_init raksha-main
	raksha_backup raksha-main full/raksha full "" "" 4MiB main "$IMG" "$SIZE_BYTES" || true
	raksha_chain_init raksha-noext
	raksha_backup raksha-noext full/raksha-noext-repo full "" no-extents "" main "$IMG" "$SIZE_BYTES" || true
	for cs in $BENCH_CHUNKS; do
		raksha_chain_init "raksha-$cs" --chunk-size "$cs"
		raksha_backup "raksha-$cs" "full/raksha-chunk-$cs" full "" "" "$cs" chunks "$IMG" "$SIZE_BYTES" || true
	done

	RESTIC_REPO=$RUN/repos/restic
	setup restic "restic init" "$RESTIC" init --repo "$RESTIC_REPO" || true
	restic_backup() {
		warm_image "$IMG"
		step restic "$1" -tool restic -op "$2" -pattern "$3" -image main -size "$SIZE_BYTES" -repo "$RESTIC_REPO" -- \
			"$RESTIC" --repo "$RESTIC_REPO" backup --host bench "$IMG" || true
	}
	restic_backup full/restic full ""

	KOPIA_REPO=$RUN/repos/kopia
	if [[ -z ${BROKEN[kopia]:-} ]]; then
		setup kopia "kopia repository create" kopia repository create filesystem --path "$KOPIA_REPO" &&
			setup kopia "kopia policy set" kopia policy set --global --compression="$KOPIA_COMPRESSION" || true
	fi
	kopia_backup() {
		warm_image "$IMG"
		step kopia "$1" -tool kopia -op "$2" -pattern "$3" -image main -size "$SIZE_BYTES" -repo "$KOPIA_REPO" -- \
			"$KOPIA" "${KOPIA_ARGS[@]}" snapshot create "$IMG" || true
	}
	kopia_backup full/kopia full ""

	# ------------------------------------------------------------------ phases 2, 3: incrementals
	for pattern in clustered scattered; do
		ext=$RUN/extents-$pattern.json
		change=$("$BT" mutate -pattern "$pattern" -seed "$BENCH_SEED" -extents "$ext" "$IMG")
		log "round $ROUND, phase: incremental backups after the $pattern change: $change"
		((ROUND > 1)) || CHANGES+=(-meta "$pattern change=${change#*: }")
		raksha_backup raksha-main "incr-$pattern/raksha-extents" incr "$pattern" extents 4MiB main "$IMG" "$SIZE_BYTES" "$ext" || true
		raksha_backup raksha-noext "incr-$pattern/raksha-no-extents" incr "$pattern" no-extents "" main "$IMG" "$SIZE_BYTES" || true
		for cs in $BENCH_CHUNKS; do
			raksha_backup "raksha-$cs" "incr-$pattern/raksha-chunk-$cs" incr "$pattern" extents "$cs" chunks "$IMG" "$SIZE_BYTES" "$ext" || true
		done
		restic_backup "incr-$pattern/restic" incr "$pattern"
		kopia_backup "incr-$pattern/kopia" incr "$pattern"
		[[ $pattern != clustered ]] || floor_incr "$ext"
	done

	# ------------------------------------------------------------------ phase 4: restores
	log "round $ROUND, phase: restores of the latest backup (the image after both changes)"
	sync
	if [[ -z ${BROKEN[raksha-main]:-} && -z ${ID[raksha-main]:-} ]]; then
		BROKEN[raksha-main]="no backup id to restore"
	fi
	repo=$(raksha_repo raksha-main)
	[[ -d $repo ]] && warm_dir "$repo"
	if step raksha-main restore/raksha -tool raksha -op restore -image main -size "$SIZE_BYTES" -- \
		env XDG_CACHE_HOME="$RUN/cache/raksha-main" "$RAKSHA" disk restore --progress none -f json --repo "file://$repo" "${ID[raksha-main]:-none}" "$RUN/restore/raksha.img"; then
		verify restore/raksha "$IMG" "$RUN/restore/raksha.img"
	fi
	rm -rf "$RUN/restore/raksha.img"

	[[ -d $RESTIC_REPO ]] && warm_dir "$RESTIC_REPO"
	if step restic restore/restic -tool restic -op restore -image main -size "$SIZE_BYTES" -- \
		"$RESTIC" --repo "$RESTIC_REPO" restore latest --sparse --target "$RUN/restore/restic"; then
		verify restore/restic "$IMG" "$RUN/restore/restic/${IMG#/}"
	fi
	rm -rf "$RUN/restore/restic"

	kopia_snap=""
	if [[ -z ${BROKEN[kopia]:-} ]]; then
		if kopia snapshot list --json "$IMG" >"$LOGS/kopia-snapshots.json" 2>"$LOGS/kopia-snapshots.log"; then
			kopia_snap=$("$BT" json "$LOGS/kopia-snapshots.json" -1.id || true)
		fi
		[[ -n $kopia_snap ]] || BROKEN[kopia]="could not list kopia snapshots"
	fi
	[[ -d $KOPIA_REPO ]] && warm_dir "$KOPIA_REPO"
	if step kopia restore/kopia -tool kopia -op restore -image main -size "$SIZE_BYTES" -- \
		"$KOPIA" "${KOPIA_ARGS[@]}" snapshot restore --write-sparse-files "${kopia_snap:-none}" "$RUN/restore/kopia.img"; then
		verify restore/kopia "$IMG" "$RUN/restore/kopia.img"
	fi
	rm -rf "$RUN/restore/kopia.img"

	# ------------------------------------------------------------------ phase 5: large sparse image
	if [[ $BENCH_BIG == 1 ]]; then
		BIG=$RUN/big.img
		mk=$("$BT" mkbig -size "$BENCH_BIG_SIZE" -total "$BENCH_BIG_DATA" -pieces 10 -seed "$BENCH_SEED" -from "$BASE" "$BIG")
		BIG_DESC="$BENCH_BIG_SIZE sparse file with $BENCH_BIG_DATA of real data (from the ext4 image) in 10 pieces spread over it; Raksha default settings."
		log "round $ROUND, phase: Raksha on a large sparse image: $mk"
		raksha_chain_init raksha-big
		raksha_backup raksha-big big/raksha-full full "" "" "" big "$BIG" "$BIG_BYTES" || true
		repo=$(raksha_repo raksha-big)
		if [[ -z ${BROKEN[raksha-big]:-} && -z ${ID[raksha-big]:-} ]]; then
			BROKEN[raksha-big]="no backup id to restore"
		fi
		if step raksha-big big/raksha-restore -tool raksha -op restore -image big -size "$BIG_BYTES" -- \
			env XDG_CACHE_HOME="$RUN/cache/raksha-big" "$RAKSHA" disk restore --progress none -f json --repo "file://$repo" "${ID[raksha-big]:-none}" "$RUN/restore/big.img"; then
			verify big/raksha-restore "$BIG" "$RUN/restore/big.img"
		fi
		rm -rf "$RUN/restore/big.img" "$BIG"
	fi
}

BIG_DESC=""
if [[ $BENCH_BIG == 1 ]]; then
	BIG_DESC="$BENCH_BIG_SIZE sparse file with $BENCH_BIG_DATA of real data (from the ext4 image) in 10 pieces spread over it; Raksha default settings."
fi
# This machine's floors (bench/floors.sh), before and after the rounds: a
# machine whose disk or memory is slower shows it here, not only in the ratios.
floors() {
	[[ -z ${TOOLBAD[raksha]:-} ]] || return 0
	log "measuring this machine's floors ($1)"
	local line
	if line=$(bench/floors.sh "$BT" "$RAKSHA" "$RUN/floors" "$((img_alloc * 1024))" 2>"$LOGS/floors-$1.err"); then
		FLOORS+=(-meta "machine:floors $1=$line")
	else
		PROBLEMS+=("bench/floors.sh failed ($1): $(tail -1 "$LOGS/floors-$1.err" | cut -c1-150)")
	fi
}
FLOORS=()
floors "before the rounds"
FLOOR_SRC=$RUN/incrfloor.src
if ! "$BT" incrfloor-source "$FLOOR_SRC" 2>"$RUN/incrfloor-source.err"; then
	PROBLEMS+=("benchtool incrfloor-source failed, no floor rows: $(tail -1 "$RUN/incrfloor-source.err" | cut -c1-150)")
	FLOOR_SRC=""
fi
for ((ROUND = 1; ROUND <= BENCH_ROUNDS; ROUND++)); do
	bench_round
done
floors "after the rounds"

# ------------------------------------------------------------------ report
metas=(
	-meta "machine:date=$(date -u '+%Y-%m-%d %H:%M UTC')"
	-meta "machine:Go=$(go version | sed 's/^go version //')"
	"${FLOORS[@]}"
	-meta "image=$IMG_DESC"
	-meta "changes=seed $BENCH_SEED; clustered = 10 runs at random 4 KiB-aligned offsets, 4 MiB each per 4 GiB of image; scattered = 1% of the 4 KiB blocks at random; random (incompressible) bytes; the scattered change is applied on top of the clustered one. Raksha with extents gets exactly the changed ranges (\`--changed-extents\`, \`--base\` = previous backup)"
	-meta "Raksha=$RAKSHA_VER; default settings (4 MiB chunks, zstd, encrypted), label vm=bench; each chain (extents, no extents, each extra chunk size) has its own repository and its own full backup"
	-meta "restic=$RESTIC_VER; defaults (repository v2, compression auto); backup of the image file, restore with --sparse"
	-meta "kopia=$KOPIA_VER; defaults except global compression policy '$KOPIA_COMPRESSION' (kopia compresses nothing by default); restore with --write-sparse-files"
	-meta "cache=warm: the page cache is not dropped (no reliable way here); before every backup the image's data is read once, before every restore the repository's files, the same for every tool; \`sync\` runs before every measured command"
	-meta "samples=$BENCH_ROUNDS round(s) of the whole sequence, each in fresh repositories on a fresh copy of the image; the tables give the median (wall: median, with min–max over the rounds; peak RSS: the largest)"
	-meta "storage=repositories, images and restores on one file system (bench/work), the machine's only disk"
	-meta "writes=Raksha writes chunk objects (64 KiB and more) and restored images (runs of 64 KiB and more) with O_DIRECT, so those device writes fall inside its measured time, and syncs the repository (syncfs) before and after each backup record; restic and kopia restore through the page cache, so write-back of a restored image may go on after they exit. Every measured command is therefore also timed up to the end of a \`sync\` run right after it exits (wall + sync: every tool's writes on the disk), and the targets are judged on those figures"
)
metas+=("${CHANGES[@]}")
[[ -n $BIG_DESC ]] && metas+=(-meta "big image=$BIG_DESC")
for p in "${PROBLEMS[@]}"; do metas+=(-meta "problem=$p"); done
mkdir -p "$(dirname "$BENCH_RESULTS")"
"$BT" report -results "$RESULTS" -md "$BENCH_RESULTS" -workdir "$WORK" -strip "$ROOT/" "${metas[@]}"
log "report written to ${BENCH_RESULTS#"$ROOT"/}; raw results in ${RESULTS#"$ROOT"/}, logs in ${RUN#"$ROOT"/}/logs"

# BENCH_RBD=1: also the RBD comparison (Raksha vs rbd export/export-diff and
# restic on stdin, on a throwaway Ceph), written to bench/RESULTS-rbd.md.
if [[ ${BENCH_RBD:-0} == 1 ]]; then
	"$ROOT/bench/rbd.sh"
fi
