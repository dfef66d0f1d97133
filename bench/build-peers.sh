#!/usr/bin/env bash
# Builds the peer backup tools (restic, kopia) at pinned versions from the Go
# module proxy into <repo>/bin. A binary that already carries the pinned
# module version (per `go version -m`) is not rebuilt.
#
# Usage: bench/build-peers.sh            # builds both
#        bench/build-peers.sh restic     # builds one
# Env:   RESTIC_VERSION, KOPIA_VERSION   # override the pins
# Exit status: 0 when every requested tool is present afterwards; otherwise 1
# (the log of a failed build is left in bench/work/build-<tool>.log).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/bin
WORK=${BENCH_WORK:-$ROOT/bench/work}
RESTIC_VERSION=${RESTIC_VERSION:-v0.18.1}
KOPIA_VERSION=${KOPIA_VERSION:-v0.22.3}
mkdir -p "$BIN" "$WORK"

# module_version BINARY MODULE -> prints the version of MODULE recorded in a
# Go binary (as its main module or as a dependency).
module_version() {
	[[ -x $1 ]] || return 0
	go version -m "$1" 2>/dev/null | awk -v m="$2" '!v && ($1 == "mod" || $1 == "dep") && $2 == m { v = $3 } END { if (v) print v }'
}

# build NAME PACKAGE MODULE VERSION
build() {
	local name=$1 pkg=$2 modpath=$3 ver=$4 have
	have=$(module_version "$BIN/$name" "$modpath")
	if [[ $have == "$ver" ]]; then
		echo "build-peers: $name $ver already in bin/, not rebuilding"
		return 0
	fi
	echo "build-peers: building $name $ver (have: ${have:-none}); this takes a few minutes on 2 cores"
	local log=$WORK/build-$name.log
	# Build into a temp dir first so a failed build never leaves a half binary
	# or removes a working older one.
	local tmp
	tmp=$(mktemp -d "$WORK/build-$name.XXXXXX")
	# `go install PKG@VERSION` is what we mean, but it asks the proxy for the
	# module's version list (to print deprecations), and the proxy used here
	# refuses list requests. So build the same package from a throwaway main
	# module that requires exactly MODULE@VERSION: the build list is the
	# module's own (neither restic nor kopia has replace directives).
	local mod=$tmp/mod
	mkdir -p "$mod"
	local gover
	gover=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
	printf 'module benchpeer/%s\n\ngo %s\n\nrequire %s %s\n' "$name" "$gover" "$modpath" "$ver" >"$mod/go.mod"
	if (cd "$mod" && GOFLAGS='-mod=mod -buildvcs=false' GOWORK=off nice -n 5 \
		go build -trimpath -o "$tmp/$name" "$pkg") >"$log" 2>&1; then
		mv -f "$tmp/$name" "$BIN/$name"
		rm -rf "$tmp"
		echo "build-peers: $name $ver built"
	else
		rm -rf "$tmp"
		echo "build-peers: FAILED to build $name $ver; last lines of $log:" >&2
		tail -n 20 "$log" >&2
		return 1
	fi
}

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(restic kopia)
rc=0
for t in "${want[@]}"; do
	case $t in
	restic) build restic github.com/restic/restic/cmd/restic github.com/restic/restic "$RESTIC_VERSION" || rc=1 ;;
	kopia) build kopia github.com/kopia/kopia github.com/kopia/kopia "$KOPIA_VERSION" || rc=1 ;;
	*) echo "build-peers: unknown tool '$t' (restic|kopia)" >&2; rc=1 ;;
	esac
done
exit $rc
