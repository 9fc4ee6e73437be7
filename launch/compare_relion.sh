#!/usr/bin/env bash
# Side by side: RELION 3.1 (relion_refine_mpi, CPU, Debian package) and cryoclass on the
# same simulated particles, same cores, matched settings; both scored against the truth.
#
#   bash launch/compare_relion.sh            # defaults below; OUT=dir N=... K=... to change
#
# Needs root for 'apt-get install relion' when RELION is missing, and `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1500}; K=${K:-12}; RES=${RES:-8}; ITER=${ITER:-15}; RANKS=${RANKS:-2}
PSI=${PSI:-6}; DIAM=${DIAM:-130}; OUT=${OUT:-compare_relion}; SEED=${SEED:-21}
CC=.venv/bin/cryoclass
MPIEXEC=.venv/bin/mpiexec

if ! command -v relion_refine_mpi >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion
fi
mkdir -p "$OUT"
if [ ! -f "$OUT/data/particles.star" ]; then
  $CC -q simulate "$OUT/data" --n "$N" --box 64 --pixel-size 3.0 --species 3 \
      --views-per-species 2 --snr 0.1 --junk 0.2 --duplicates 0 --seed "$SEED"
fi

# RELION: rank 0 is a leader that processes no particles and busy-polls: it gets nice 19
# (MPMD), the RANKS workers use one thread each, as cryoclass's RANKS ranks do.
ARGS="--i particles.star --o ../relion/run --ctf --K $K --iter $ITER --tau2_fudge 2
      --particle_diameter $DIAM --zero_mask --flatten_solvent --psi_step $PSI
      --offset_range 5 --offset_step 1 --oversampling ${OVERSAMPLING:-0} --strict_highres_exp $RES
      --norm --scale --pad 2 --pool 30 --j 1 --dont_combine_weights_via_disc"
mkdir -p "$OUT/relion"
t0=$(date +%s.%N)
( cd "$OUT/data" && mpirun --allow-run-as-root --oversubscribe \
    -n 1 nice -n 19 relion_refine_mpi $ARGS : -n "$RANKS" relion_refine_mpi $ARGS \
    > ../relion/stdout.log 2>&1 )
t_relion=$(echo "$(date +%s.%N) - $t0" | bc)
last=$(printf "%s/relion/run_it%03d_data.star" "$OUT" "$ITER")

# cryoclass: CryoSPARC-style online EM (20 x 100 particles per class, then one full pass)
t0=$(date +%s.%N)
$MPIEXEC -n "$RANKS" $CC -q classify "$OUT/data/particles.star" --out "$OUT/cryoclass" \
    --classes "$K" --max-res "$RES" --psi-step "$PSI" --mask-diameter "$DIAM" \
    --keep-duplicates --no-plots
t_cc=$(echo "$(date +%s.%N) - $t0" | bc)

$CC evaluate "$OUT/data/truth.h5" "$last" --json "$OUT/relion.json" > /dev/null
$CC evaluate "$OUT/data/truth.h5" "$OUT/cryoclass/particles.star" --json "$OUT/cryoclass.json" > /dev/null
.venv/bin/python - "$OUT" "$t_relion" "$t_cc" "$N" "$K" "$ITER" <<'PY'
import json, sys
out, tr, tc, n, k, it = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *map(int, sys.argv[4:])
r = json.load(open(f"{out}/relion.json")); c = json.load(open(f"{out}/cryoclass.json"))
rows = [("wall time (s)", f"{tr:.0f}", f"{tc:.0f}"),
        ("particle visits", f"{it * n}", f"{min(20 * 100 * k, 20 * n) + n}")]
for key in ("species_in_own_classes", "junk_in_junk_classes", "class_species_purity",
            "psi_median_error_deg", "psi_p90_error_deg", "populated_classes"):
    rows.append((key, f"{r[key]:.3f}", f"{c[key]:.3f}"))
text = "| metric | RELION 3.1 | cryoclass |\n|---|---|---|\n" + "\n".join(
    f"| {a} | {b} | {c_} |" for a, b, c_ in rows)
text += f"\n\ncryoclass / RELION wall-time ratio: {tr / tc:.1f}x faster\n"
open(f"{out}/table.md", "w").write(text)
print(text)
PY
