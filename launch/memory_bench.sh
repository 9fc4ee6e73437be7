#!/usr/bin/env bash
# Peak resident memory per rank against the number of particles N.
#   bash launch/memory_bench.sh [WORKDIR]      (make bench-memory)
# Simulates one set of NMAX particles (box 64, 3 Å/px) in WORKDIR, cuts its first N rows
# into subsets, classifies each with `mpiexec -n RANKS` (K = 10, 12 Å, one online-EM and
# one full iteration) with the particles in RAM and with --scratch, and prints each run's
# peak RSS per rank (from the run's own log line) as a Markdown table.
# Environment: NS (default "10000 50000 100000 250000 500000"), RANKS (2), NMAX (max NS).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work=${1:-memory_bench}
ranks=${RANKS:-2}
ns=${NS:-"10000 50000 100000 250000 500000"}
nmax=${NMAX:-$(tr ' ' '\n' <<<"$ns" | sort -n | tail -1)}
py="$here/.venv/bin/python"
cc="$here/.venv/bin/cryoclass"
mkdir -p "$work"
if [ ! -f "$work/sim/particles.star" ]; then
    OPENBLAS_NUM_THREADS=1 "$cc" -q simulate "$work/sim" --n "$nmax" --box 64 \
        --pixel-size 3.0 --seed 11
fi
opts=(--classes 10 --max-res 12 --online-iters 1 --batch-per-class 100 --no-plots
      --no-progress --keep-duplicates)
echo "| N | particles in | peak RSS per rank (MB) | at the end: anonymous / file-backed (MB) | wall (s) |"
echo "|---|---|---|---|---|"
for n in $ns; do
    # the first n rows of the big set (its header, then n data rows)
    "$py" - "$work/sim/particles.star" "$work/sim/p$n.star" "$n" <<'EOF'
import sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src) as f:
    lines = f.read().split("\n")
start = max(i for i, ln in enumerate(lines) if ln.startswith("_rln")) + 1
with open(dst, "w") as g:
    g.write("\n".join(lines[:start + n]) + "\n")
EOF
    for mode in ram scratch; do
        run="$work/run_${n}_$mode"
        rm -rf "$run"
        extra=()
        [ "$mode" = scratch ] && extra=(--scratch "$work/scratch")
        t0=$EPOCHREALTIME
        "$here/.venv/bin/mpiexec" -n "$ranks" "$cc" -q classify "$work/sim/p$n.star" \
            --out "$run" "${opts[@]}" "${extra[@]}"
        t1=$EPOCHREALTIME
        line=$(grep "peak memory per rank" "$run/logs/rank0000.log" | tail -1)
        peak=$(sed -E 's/.*\(MB\): ([0-9, ]+);.*/\1/' <<<"$line")
        endm=$(sed -E 's/.*file-backed \(MB\): (.*)$/\1/' <<<"$line")
        printf "| %s | %s | %s | %s | %.0f |\n" "$n" "$mode" "$peak" "$endm" \
            "$("$py" -c "print($t1 - $t0)")"
    done
done
