#!/usr/bin/env bash
# Peak resident memory per rank against the number of particles N.
#   bash launch/memory_bench.sh [WORKDIR]      (make bench-memory)
# Simulates one set of NMAX particles (box 64, 3 Å/px) in WORKDIR and classifies subsets
# of it (its first N rows; K = 10, 12 Å, one online-EM and one full iteration, duplicates
# kept), printing each run's peak RSS per rank from the run's own log as Markdown tables:
#   1. a fixed rank count RANKS (2), N in NS, particles in RAM and with --scratch;
#   2. a fixed shard of SHARD (10000) particles per rank, on 1..max(RANKS_LIST) ranks
#      (N = SHARD x ranks, --scratch): rank 0's and the other ranks' peak must not grow.
# Environment: NS ("10000 50000 100000 250000 500000"), RANKS (2), SHARD (10000),
# RANKS_LIST ("1 5 10 25 50"), NMAX (the largest N of both tables).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work=${1:-memory_bench}
ranks=${RANKS:-2}
ns=${NS:-"10000 50000 100000 250000 500000"}
shard=${SHARD:-10000}
ranks_list=${RANKS_LIST:-"1 5 10 25 50"}
nmax=${NMAX:-$(for n in $ns; do echo "$n"; done; for r in $ranks_list; do echo $((r * shard)); done)}
nmax=$(tr ' ' '\n' <<<"$nmax" | sort -n | tail -1)
py="$here/.venv/bin/python"
cc="$here/.venv/bin/cryoclass"
mpiexec="$here/.venv/bin/mpiexec"
mkdir -p "$work"
if [ ! -f "$work/sim/particles.star" ]; then
    OPENBLAS_NUM_THREADS=1 "$cc" -q simulate "$work/sim" --n "$nmax" --box 64 \
        --pixel-size 3.0 --seed 11
fi
opts=(--classes 10 --max-res 12 --online-iters 1 --batch-per-class 100 --no-plots
      --no-progress --keep-duplicates)

subset() {  # the first $1 rows of the big set: its header, then $1 data rows
    [ -f "$work/sim/p$1.star" ] || "$py" - "$work/sim/particles.star" "$work/sim/p$1.star" \
        "$1" <<'EOF'
import sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src) as f:
    lines = f.read().split("\n")
start = max(i for i, ln in enumerate(lines) if ln.startswith("_rln")) + 1
with open(dst, "w") as g:
    g.write("\n".join(lines[:start + n]) + "\n")
EOF
}

run() {  # run N RANKS MODE -> sets $peaks (MB, per rank), $endm, $wall
    local n=$1 r=$2 mode=$3 run="$work/run_$1_$2_$3" extra=()
    rm -rf "$run"
    [ "$mode" = scratch ] && extra=(--scratch "$work/scratch")
    local t0=$EPOCHREALTIME
    "$mpiexec" -n "$r" "$cc" -q classify "$work/sim/p$n.star" --out "$run" "${opts[@]}" \
        "${extra[@]}" 2>>"$work/stderr.log"
    wall=$("$py" -c "print(round($EPOCHREALTIME - $t0))")
    local line
    line=$(grep "peak memory per rank" "$run/logs/rank0000.log" | tail -1)
    peaks=$(sed -E 's/.*\(MB\): ([0-9, ]+);.*/\1/' <<<"$line")
    endm=$(sed -E 's/.*file-backed \(MB\): (.*)$/\1/' <<<"$line")
}

echo "### $ranks ranks, N particles"
echo
echo "| N | particles in | peak RSS per rank (MB) | at the end: anonymous / file-backed (MB) | wall (s) |"
echo "|---|---|---|---|---|"
for n in $ns; do
    subset "$n"
    for mode in ram scratch; do
        run "$n" "$ranks" "$mode"
        echo "| $n | $mode | $peaks | $endm | $wall |"
    done
done
echo
echo "### $shard particles per rank (--scratch), N = $shard x ranks"
echo
echo "| ranks | N | peak RSS rank 0 (MB) | other ranks: min - max (MB) | wall (s) |"
echo "|---|---|---|---|---|"
for r in $ranks_list; do
    n=$((r * shard))
    subset "$n"
    run "$n" "$r" scratch
    read -r -a p <<<"$(tr -d ',' <<<"$peaks")"
    others="-"
    if [ "${#p[@]}" -gt 1 ]; then
        others="$(printf '%s\n' "${p[@]:1}" | sort -n | head -1) - $(printf '%s\n' "${p[@]:1}" | sort -n | tail -1)"
    fi
    echo "| $r | $n | ${p[0]} | $others | $wall |"
done
