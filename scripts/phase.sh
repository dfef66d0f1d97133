#!/bin/bash
# phase.sh NAME CMD...: run CMD, then print how long the phase took, so the
# time CI spends stays visible phase by phase.
set -uo pipefail
name=$1; shift
start=$(date +%s%N)
echo "=== phase: $name"
"$@"
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '=== phase: %s: %s in %d.%01ds\n' "$name" "$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)")" $((ms / 1000)) $((ms % 1000 / 100))
exit $rc
