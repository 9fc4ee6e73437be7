#!/usr/bin/env bash
# RELION 3.1 2D classification of one hard-benchmark case with the standard settings of
# docs/accuracy.md (issue 11), timed; the result is cached (it does not depend on cryoclass).
#
#   bash launch/bench_relion.sh DATA_DIR OUT_DIR K DIAMETER_A
#
# DATA_DIR holds particles.star (from cryoclass simulate); OUT_DIR gets run_it015_*.star/
# .mrcs, stdout.log and timing.txt (wall time, `uptime` before and after). When
# OUT_DIR/timing.txt exists the run is skipped. RANKS (default 2) worker ranks, one thread
# each; the leader rank processes no particles and busy-polls, so it runs niced (MPMD).
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(realpath -m "$2"); K=$3; DIAM=$4
RANKS=${RANKS:-2}; ITER=${ITER:-15}; SEED=${RELION_SEED:-1}
# another call running this case: wait for it (its pid is in OUT/running.pid)
if [ -f "$OUT/running.pid" ] && kill -0 "$(cat "$OUT/running.pid")" 2>/dev/null; then
  echo "RELION K=$K: waiting for the run in progress (pid $(cat "$OUT/running.pid"))"
  while kill -0 "$(cat "$OUT/running.pid")" 2>/dev/null; do sleep 30; done
fi
if [ -f "$OUT/timing.txt" ]; then
  echo "RELION K=$K: cached in $OUT"; exit 0
fi
if ! command -v relion_refine_mpi >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion
fi
mkdir -p "$OUT"
echo $$ > "$OUT/running.pid"
trap 'rm -f "$OUT/running.pid"' EXIT
ARGS="--i particles.star --o $OUT/run --K $K --iter $ITER --tau2_fudge 2
      --particle_diameter $DIAM --ctf --zero_mask --flatten_solvent --oversampling 1
      --psi_step 10 --offset_range 5 --offset_step 2 --norm --scale
      --pool 30 --pad 2 --j 1 --dont_combine_weights_via_disc --random_seed $SEED"
{
  echo "command: mpirun -n 1 nice -n 19 relion_refine_mpi ARGS : -n $RANKS relion_refine_mpi ARGS"
  echo "ARGS: $(echo $ARGS)"
  echo "data: $DATA"
  echo "uptime before: $(uptime)"
} > "$OUT/timing.partial"
t0=$(date +%s.%N)
( cd "$DATA" && OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe \
    -n 1 nice -n 19 relion_refine_mpi $ARGS : -n "$RANKS" relion_refine_mpi $ARGS \
    > "$OUT/stdout.log" 2>&1 )
t1=$(date +%s.%N)
{
  echo "uptime after: $(uptime)"
  echo "wall_s: $(echo "$t1 - $t0" | bc)"
} >> "$OUT/timing.partial"
mv "$OUT/timing.partial" "$OUT/timing.txt"
echo "RELION K=$K: $(grep wall_s "$OUT/timing.txt") -> $OUT"
