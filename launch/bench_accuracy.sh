#!/usr/bin/env bash
# The hard accuracy benchmark (docs/accuracy.md, issue 11): simulate one case once, run
# cryoclass (defaults + --classes K + the particle diameter) on RANKS ranks and RELION 3.1
# with its standard 2D settings on the same particles, score both with `cryoclass evaluate`
# and write one markdown table.
#
#   make bench-accuracy                                   # SNR 0.05, N 4000, K 10
#   SNR=0.02 K=50 RELION=0 EXTRA="--set ..." bash launch/bench_accuracy.sh
#   JUNK=noise,off_centre,other_particle bash launch/bench_accuracy.sh  # docs/accuracy.md 5.13
#   MODEL=6msm bash launch/bench_accuracy.sh   # a real structure (CFTR), docs/accuracy.md 5.14
#   JUNK_FRACTION=0.5 bash launch/bench_accuracy.sh        # half of the picks junk (5.14)
#   CACHE=/work/bench_cache bash launch/bench_accuracy.sh # reuse data and RELION results
#
# Environment: SNR (0.05), N (4000), K (10), RELION (1 = also run/reuse RELION, 0 = not),
# EXTRA (extra cryoclass classify arguments), OUT (bench_accuracy: cryoclass runs and
# tables), CACHE (data and RELION results; default OUT), RANKS (2), SEED (11), TAG (name of
# the cryoclass run, default cryoclass_kK), JUNK (junk kinds for `simulate --junk-types`;
# default the hard preset's noise,off_centre,broken; a case of its own, CACHE/snrS_nN_JUNK),
# JUNK_FRACTION (`simulate --junk`, default the preset's 0.2; case suffix _junkF), MODEL
# (6msm or 1bd2: the particle is that PDB model at its own size, 3 Å/px, diameter 140 Å,
# fetched by launch/fetch_model.sh into CACHE/models; case suffix _MODEL).
# Layout: CACHE/snrS_nN/data (simulated once), CACHE/snrS_nN/relion_kK (RELION, cached:
# it does not depend on cryoclass), OUT/snrS_nN_kK/TAG (cryoclass, re-run every time) and
# OUT/snrS_nN_kK/TAG.md (the table).
set -euo pipefail
cd "$(dirname "$0")/.."
SNR=${SNR:-0.05}; N=${N:-4000}; K=${K:-10}; RELION=${RELION:-1}; EXTRA=${EXTRA:-}
OUT=${OUT:-bench_accuracy}; CACHE=${CACHE:-$OUT}; RANKS=${RANKS:-2}; SEED=${SEED:-11}
TAG=${TAG:-cryoclass_k$K}
JUNK=${JUNK:-}
JUNK_FRACTION=${JUNK_FRACTION:-}; MODEL=${MODEL:-}
SUFFIX=${JUNK:+_$(echo "$JUNK" | tr ',' '-')}${JUNK_FRACTION:+_junk$JUNK_FRACTION}${MODEL:+_$MODEL}
SIM_ARGS="${JUNK:+--junk-types $JUNK} ${JUNK_FRACTION:+--junk $JUNK_FRACTION}"
if [ -n "$MODEL" ]; then
  case "$MODEL" in
    6msm) FILE=6msm.pdb.bz2 ;;
    1bd2) FILE=1BD2.pdb.gz ;;
    *) echo "MODEL: 6msm or 1bd2" >&2; exit 2 ;;
  esac
  bash launch/fetch_model.sh "$CACHE/models"
  SIM_ARGS="$SIM_ARGS --phantoms pdb:$CACHE/models/$FILE --diameter 140 --pixel-size 3"
fi
CC=.venv/bin/cryoclass
MPIEXEC=.venv/bin/mpiexec
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

CASE=$CACHE/snr${SNR}_n${N}$SUFFIX
DATA=$CASE/data
if [ ! -f "$DATA/particles.star" ]; then
  # shellcheck disable=SC2086
  $CC -q simulate "$DATA" --preset hard --snr "$SNR" --n "$N" --seed "$SEED" $SIM_ARGS
fi
DIAM=$(.venv/bin/python -c "import h5py, json, sys; \
print(json.loads(h5py.File(sys.argv[1]).attrs['params_json'])['diameter_A_resolved'])" \
  "$DATA/truth.h5")

RDIR=$CASE/relion_k$K
if [ "$RELION" = 1 ]; then
  RANKS=$RANKS bash launch/bench_relion.sh "$DATA" "$RDIR" "$K" "$DIAM"
  if [ ! -f "$RDIR/evaluate.json" ] || [ "$RDIR/evaluate.json" -ot src/cryoclass/evaluate.py ]; then
    $CC evaluate "$DATA/truth.h5" "$RDIR/run_it015_data.star" --json "$RDIR/evaluate.json" \
      > /dev/null
  fi
fi

RUN=$OUT/snr${SNR}_n${N}${SUFFIX}_k$K/$TAG
rm -rf "$RUN"
mkdir -p "$RUN"
# the particle diameter a user gives (as RELION's --particle_diameter: mask, normalisation, search)
ARGS="$DATA/particles.star --out $RUN/run --classes $K --particle-diameter $DIAM --no-plots \
--no-progress $EXTRA"
{
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- src || echo ' (modified)')"
  echo "command: $MPIEXEC -n $RANKS $CC classify $ARGS"
  echo "uptime before: $(uptime)"
} > "$RUN/timing.partial"
t0=$(date +%s.%N)
# shellcheck disable=SC2086
$MPIEXEC -n "$RANKS" $CC classify $ARGS > "$RUN/stdout.log" 2>&1
t1=$(date +%s.%N)
{
  echo "uptime after: $(uptime)"
  echo "wall_s: $(echo "$t1 - $t0" | bc)"
} >> "$RUN/timing.partial"
mv "$RUN/timing.partial" "$RUN/timing.txt"
$CC evaluate "$DATA/truth.h5" "$RUN/run/particles.star" --json "$RUN/evaluate.json" > /dev/null

.venv/bin/python launch/bench_table.py --case "SNR $SNR, N $N, K $K${JUNK:+, junk $JUNK}${JUNK_FRACTION:+, junk fraction $JUNK_FRACTION}${MODEL:+, model $MODEL}" \
  --cryoclass "$RUN" $( [ "$RELION" = 1 ] && echo "--relion $RDIR" ) \
  --out "$OUT/snr${SNR}_n${N}${SUFFIX}_k$K/$TAG.md"
