#!/usr/bin/env bash
# bench/floors.sh: this machine's floors, for the report: what its disk, its
# process start and its memory cost before any backup tool does any work.
# bench/run.sh runs it before and after the rounds and puts its one line in
# RESULTS.md's machine section, so that a target missed on one machine and
# met on another can be told apart from a change in Raksha
# (bench/PROFILE.md, "Third round").
#
# Usage: bench/floors.sh BENCHTOOL RAKSHA DIR DATA_BYTES
#   DATA_BYTES: the bytes a restore of the bench image writes (its data).
# Prints one line of text. Needs nothing but the two binaries.
set -euo pipefail
BT=$1 RAKSHA=$2 DIR=$3 DATA=$4
mkdir -p "$DIR"
f() { "$BT" json /dev/stdin "$1"; }
ms() { awk -v s="$1" 'BEGIN { printf "%.0f", s * 1000 }'; }
secs() { awk -v s="$1" 'BEGIN { printf "%.2f", s }'; }

big=$("$BT" diskfloor -bytes "$DATA" "$DIR/floor.big")
small=$("$BT" diskfloor -bytes 48MiB "$DIR/floor.small")
start=$("$BT" starttime -n 15 -- "$RAKSHA" --help)
noop=$("$BT" starttime -n 15 -- "$BT" size 1)

# The unlock: argon2id with the default cost, in a throwaway repository,
# 5 processes (the debug log gives the KDF's own time).
repo=$DIR/floor-repo
rm -rf "$repo"
export RAKSHA_PASSWORD=floor XDG_CACHE_HOME=$DIR/floor-cache
"$RAKSHA" repo init --repo "file://$repo" >/dev/null
unlock=()
for _ in 1 2 3 4 5; do
	sleep 3 # longer than free page reporting's delay: the pages are cold again
	t=$("$RAKSHA" --log-level debug backup list --repo "file://$repo" 2>&1 >/dev/null |
		sed -n 's/.*master key unwrapped.*took=\([0-9.]*\)\(µs\|ms\|s\).*/\1 \2/p' |
		awk '{ v = $1; if ($2 == "s") v *= 1000; if ($2 == "µs") v /= 1000; printf "%.0f", v }')
	unlock+=("${t:-?}")
done
rm -rf "$repo" "$DIR/floor-cache"
sorted=$(printf '%s\n' "${unlock[@]}" | sort -n | paste -sd' ')

reporting="off"
pr=/sys/module/page_reporting/parameters
if [[ -r $pr/page_reporting_order ]]; then
	reporting="on (order $(cat $pr/page_reporting_order): freed memory goes back to the host, and a process's first touch of it faults there)"
fi

printf '%s\n' "disk: $(awk -v b="$DATA" 'BEGIN { printf "%.2f GB", b / 1e9 }') of 4 MiB O_DIRECT writes $(secs "$(f write_s <<<"$big")") s + fdatasync $(secs "$(f flush_s <<<"$big")") s = **$(secs "$(f total_s <<<"$big")") s** (the floor of a restore of the image), 48 MiB $(ms "$(f write_s <<<"$small")") + $(ms "$(f flush_s <<<"$small")") ms; process start: \`raksha --help\` $(ms "$(f median_s <<<"$start")") ms, a Go program doing nothing $(ms "$(f median_s <<<"$noop")") ms (medians of 15); unlock (argon2id, 46 MiB, 5 processes 3 s apart): $sorted ms; free page reporting: $reporting"
