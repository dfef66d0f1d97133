#!/bin/bash
# `make demo`: the real thing, on one machine. It starts the Temporal dev
# server with its Web UI, the lab cloud with its demo workload (two guests as
# libvirt domains, as Nova's libvirt driver runs them: each with its root
# disk, an ephemeral disk and a volume, an application writing records on
# them), and Raksha's workers (control + a host worker on libvirt, as on a
# compute node); then backs the workload up application-consistently, lets the
# application write more, backs it up again incrementally, restores a volume
# and checks it, restores one server as a new one through the Restore
# workflow, clones the workload into project staging with a masking hook and
# a health check and deletes the clone, and prints one table of the backups
# (figures, consistency, freeze windows per guest and for the workload) and
# the Web UI's links. DEMO_COMPUTE=qemu runs the guests as QEMU processes
# with the host worker on the lab's socket layout instead (no root, no
# libvirtd).
# Everything it started stops on Ctrl-C; DEMO_EXIT=1 stops and exits at the end
# (CI). DEMO_DIR sets the working directory (default: a new temporary one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
RAKSHA=$BIN/raksha
W=${DEMO_DIR:-$(mktemp -d /tmp/rkdemo.XXXX)}
mkdir -p "$W"
TPORT=${DEMO_TEMPORAL_PORT:-7233}
UIPORT=${DEMO_UI_PORT:-8233}
COMPUTE=${DEMO_COMPUTE:-libvirt}
PIDS=()
STARTED_LIBVIRTD=0
say()  { printf '\n\033[1m# %s\033[0m\n' "$*"; }
fail() { echo "DEMO FAILED: $*" >&2; exit 1; }
cleanup() {
	set +e
	say "stopping what the demo started"
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	"$RAKSHA" lab down --dir "$W/lab" >/dev/null 2>&1
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	[ "$STARTED_LIBVIRTD" = 1 ] && LIBVIRTD_OWNER=demo-$$ "$ROOT/scripts/libvirtd-down.sh" >/dev/null 2>&1
	[ -n "${DEMO_DIR:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in raksha raksha-worker temporal; do [ -x "$BIN/$b" ] || fail "$BIN/$b missing: run make demo"; done

say "1. Temporal dev server with the Web UI (search attributes registered)"
"$BIN/temporal" server start-dev --ip 127.0.0.1 --port "$TPORT" --ui-port "$UIPORT" --db-filename "$W/temporal.db" \
	--log-level error --search-attribute RakshaWorkload=Keyword --search-attribute RakshaProject=Keyword \
	--search-attribute RakshaOperation=Keyword --search-attribute RakshaPolicy=Keyword \
	--search-attribute RakshaBackup=Keyword --search-attribute RakshaDrill=Keyword >"$W/temporal.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$TPORT") 2>/dev/null && break; sleep 0.2; done
(echo >/dev/tcp/127.0.0.1/"$TPORT") 2>/dev/null || fail "Temporal did not start (see $W/temporal.log)"
echo "Temporal on 127.0.0.1:$TPORT, Web UI http://127.0.0.1:$UIPORT"

case $COMPUTE in
libvirt)
	[ "$(id -u)" = 0 ] || fail "the demo runs its guests under the system libvirtd, as a Nova compute node does: run it as root (or DEMO_COMPUTE=qemu for QEMU processes)"
	out=$(LIBVIRTD_OWNER=demo-$$ "$ROOT/scripts/libvirtd-up.sh") || fail "libvirtd did not start: $out"
	echo "$out"
	case $out in *started*) STARTED_LIBVIRTD=1 ;; esac ;;
qemu) ;;
*) fail "DEMO_COMPUTE=$COMPUTE: use libvirt or qemu" ;;
esac

say "2. The lab cloud and its demo workload ($COMPUTE; 2 guests booting under TCG: about half a minute)"
"$RAKSHA" lab up --dir "$W/lab" --compute "$COMPUTE"
export OS_CLIENT_CONFIG_FILE=$W/lab/clouds.yaml OS_CLOUD=raksha-lab

say "3. An encrypted repository, and the workers (control, and a host worker per lab host)"
head -c 24 /dev/urandom | base64 > "$W/repo.pw"
RAKSHA_PASSWORD=$(cat "$W/repo.pw") "$RAKSHA" repo init --repo "file://$W/repo" --chunk-size 1MiB
cat > "$W/worker.yaml" <<YAML
temporal: {address: "127.0.0.1:$TPORT", namespace: default}
work_dir: $W/work
repositories:
  main: {url: "file://$W/repo", password_file: "$W/repo.pw"}
# Restores write image files only here: the lab's instance directories and volumes.
write_roots: ["$W/lab/hosts", "$W/lab/volumes"]
YAML
if [ "$COMPUTE" = libvirt ]; then
	# As on a Nova compute node: the host worker reaches the guests through
	# libvirtd; discovery gives libvirt: locators (root disks included).
	"$BIN/raksha-worker" --config "$W/worker.yaml" --roles control,data --host-driver libvirt >"$W/worker-control.log" 2>&1 &
	PIDS+=($!)
	"$BIN/raksha-worker" --config "$W/worker.yaml" --roles host --host lab-host-1 --libvirt-uri qemu:///system \
		--lock-dir "$W/lab/locks" >"$W/worker-lab-host-1.log" 2>&1 &
	PIDS+=($!)
	DISKS_PER_VM=3
else
	"$BIN/raksha-worker" --config "$W/worker.yaml" --roles control,data >"$W/worker-control.log" 2>&1 &
	PIDS+=($!)
	for h in lab-host-1 lab-host-2; do
		"$BIN/raksha-worker" --config "$W/worker.yaml" --roles host --host "$h" --host-dir "$W/lab/hosts/$h" >"$W/worker-$h.log" 2>&1 &
		PIDS+=($!)
	done
	DISKS_PER_VM=2
fi
sleep 2
export RAKSHA_TEMPORAL=127.0.0.1:$TPORT

say "3b. The example policy as a Temporal Schedule (daily at 02:00, keep 3 last / 7 daily / 4 weekly / 6 monthly)"
"$RAKSHA" policy apply -f "$ROOT/policies/examples/demo-daily.yaml"
"$RAKSHA" policy list

say "4. Application-consistent backup of workload demo (freeze both guests, checkpoint, thaw, copy)"
"$RAKSHA" --progress lines backup start --workload demo --project demo --repository main --freeze-timeout 30s --wait | tee "$W/b1.txt"

say "5. The application writes more for 5 s; then an incremental backup (dirty bitmaps: only changed chunks are read)"
sleep 5
"$RAKSHA" --progress lines backup start --workload demo --project demo --repository main --freeze-timeout 30s --wait | tee "$W/b2.txt"
B2=$(awk '/^backup /{print $2; exit}' "$W/b2.txt")
[ -n "$B2" ] || fail "no backup id in the second backup's output"

say "6. The backups in the repository: size, bytes read / new / reused from earlier backups / stored (compressed, encrypted), consistency, each guest's freeze window"
export RAKSHA_PASSWORD_FILE_DEMO=$W/repo.pw
"$RAKSHA" backup list --repo "file://$W/repo" --password-file "$W/repo.pw"
"$RAKSHA" backup list --repo "file://$W/repo" --password-file "$W/repo.pw" -f json | python3 -c '
import json, sys
bad = [b["id"] for b in json.load(sys.stdin) if b.get("consistency") != "app" or len(b.get("freeze_windows") or {}) != 2]
sys.exit("not app-consistent with a freeze window per guest: %s" % bad if bad else 0)' || fail "a backup lacks its freeze windows"

say "7. Restore the volume of demo-1 from the incremental backup and check its file system"
DISK=$("$RAKSHA" backup show "$B2" --repo "file://$W/repo" --password-file "$W/repo.pw" -f json |
	python3 -c 'import json,sys; d=json.load(sys.stdin); print([x["vm"]+"/"+x["disk"] for x in d["backup"]["disks"] if x["vm"]=="demo-1" and x["disk"].startswith("vol-")][0])')
"$RAKSHA" disk restore "$B2" "$W/restored.raw" --disk "$DISK" --repo "file://$W/repo" --password-file "$W/repo.pw"
e2fsck -fn "$W/restored.raw" >"$W/e2fsck.log" 2>&1 || { cat "$W/e2fsck.log"; fail "restored file system is not clean"; }
echo "e2fsck -fn: clean ($(tail -1 "$W/e2fsck.log"))"
"$RAKSHA" repo verify --repo "file://$W/repo" --password-file "$W/repo.pw"

say "7b. Restore server demo-2 from the incremental backup as a new server (a Restore workflow: new volume written, server recreated from the captured metadata, its ephemeral disk written while it is stopped once)"
"$RAKSHA" --progress lines restore start "$B2" --repository main --vm demo-2 --name-prefix restored- --no-workload-label --wait | tee "$W/r1.txt"
grep -q "1 servers, 1 volumes, $DISKS_PER_VM disks" "$W/r1.txt" || fail "the restore did not make 1 server with 1 volume and $DISKS_PER_VM disks"
"$RAKSHA" lab status --dir "$W/lab" | tee "$W/lab-status.txt"
grep -E "restored-demo-2 .*ACTIVE" "$W/lab-status.txt" >/dev/null || fail "the restored server is not ACTIVE"
"$RAKSHA" restore list

say "7c. Clone the workload into project staging: every guest restored there, a masking hook, then a health check (the in-guest checker and the mask) in each; then delete the clone"
"$RAKSHA" --progress lines clone start "$B2" --name stg1 --repository main --to-project staging --name-prefix stg- \
	--post-hook 'for d in /data/*; do echo masked > $d/MASKED; done; sync' \
	--health-check 'guestapp check /data/* && cat /data/*/MASKED' --wait | tee "$W/c1.txt"
grep -q "2 servers" "$W/c1.txt" || fail "the clone did not make 2 servers"
"$RAKSHA" lab status --dir "$W/lab" | grep -E "^staging " || fail "no clone server in project staging"
"$RAKSHA" clone delete stg1 --project staging
"$RAKSHA" lab status --dir "$W/lab" | grep -E "^staging .*stg-" && fail "the clone's servers are still there after its delete"
"$RAKSHA" clone list

say "7d. A restore drill (policies/examples/demo-drill.yaml, triggered now rather than on Sunday): the newest backup cloned into staging, booted, the health check run in every guest, the clone torn down, the result recorded beside the backup"
"$RAKSHA" policy apply -f "$ROOT/policies/examples/demo-drill.yaml"
"$RAKSHA" policy trigger demo-drill
DRILL=""
for _ in $(seq 150); do
	DRILL=$("$RAKSHA" backup list --repo "file://$W/repo" --password-file "$W/repo.pw" -f json | python3 -c '
import json, sys
d = [b["last_drill"] for b in json.load(sys.stdin) if b.get("last_drill")]
print("%s %.1fs" % (d[-1]["result"], d[-1].get("time_to_ready", 0) / 1e9) if d else "")')
	[ -n "$DRILL" ] && break
	sleep 2
done
[ -n "$DRILL" ] || fail "the drill recorded nothing within 5 minutes"
echo "drill: $DRILL (result, time to ready)"
case $DRILL in pass*) ;; *) fail "the drill did not pass: $DRILL" ;; esac
"$RAKSHA" lab status --dir "$W/lab" | grep -E "^staging " && fail "the drill's clone is still there"

say "7e. The backups: size, bytes read / new / reused from earlier backups / stored (compressed, encrypted), consistency, freeze windows (the workload's: first freeze to last thaw, and each guest's), last drill"
"$RAKSHA" backup list --repo "file://$W/repo" --password-file "$W/repo.pw"

say "8. Temporal Web UI"
echo "workflows:      http://127.0.0.1:$UIPORT/namespaces/default/workflows?query=RakshaWorkload%3D%22demo%22"
echo "latest backup:  http://127.0.0.1:$UIPORT/namespaces/default/workflows/backup%2Fdemo%2Fdemo"
echo "restores:       http://127.0.0.1:$UIPORT/namespaces/default/workflows?query=RakshaOperation%3D%22restore%22"
echo "clones:         http://127.0.0.1:$UIPORT/namespaces/default/workflows?query=RakshaOperation%3D%22clone%22"
echo "drills:         http://127.0.0.1:$UIPORT/namespaces/default/workflows?query=RakshaOperation%3D%22drill%22"
echo "worker logs:    $W/worker-*.log"

if [ "${DEMO_EXIT:-0}" = 1 ]; then
	echo "demo ($COMPUTE): 2 app-consistent backups of a 2-VM workload made, a volume restored and checked, a server restored and running, a staging clone made, checked and deleted, a restore drill passed"
	exit 0
fi
say "Everything keeps running: Ctrl-C stops it all"
while true; do sleep 3600; done
