#!/usr/bin/env bash
# One prepared command for a lent GPU machine (no package registry there): the CuPy tests,
# `cryoclass bench` on one GPU at K=50 (64 px and 256 px at the same resolution limits)
# and a 2-rank classification sharing one GPU. Everything it measures goes to $OUT.
#
# Here, once (downloads the wheels the GPU machine lacks into .whl/, ignored by git):
#   make device-wheels
# Then with the device tool, from the repository root:
#   run(command="bash launch/device_check.sh", carry=[".whl"], timeout_s=540)
# On a CPU machine, to check the script itself (tiny sizes, NumPy):
#   BACKEND=numpy OUT=/tmp/dc bash launch/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_check_out}
BACKEND=${BACKEND:-cupy}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/device_check.log"
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site" \
    && export PATH="/tmp/site/bin:$PATH"
fi
PY=${PY:-python3}
if [ "$BACKEND" = numpy ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
MPIEXEC=$(command -v mpiexec || true)
[ -x .venv/bin/mpiexec ] && [ "$BACKEND" = numpy ] && MPIEXEC=.venv/bin/mpiexec

say "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $PY -c "import sys, numpy, h5py, mpi4py; print(sys.version.split()[0], 'numpy', numpy.__version__, 'h5py', h5py.__version__, 'mpi4py', mpi4py.__version__)"
  $PY -c "import cupy; print('cupy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())" 2>&1 || true
  $PY -c "import mrcfile; print('mrcfile', mrcfile.__version__)" 2>&1
  echo "mpiexec: ${MPIEXEC:-none}"; } 2>&1 | tee -a "$LOG"

if [ "$BACKEND" = numpy ]; then N64=300; N256=100; K=5; NRUN=400; TESTS="tests/test_numerics_estep.py"
else N64=5000; N256=2000; K=50; NRUN=4000; TESTS="tests/test_numerics_*.py tests/test_store.py tests/test_precision.py"; fi

say "CuPy-parametrized tests ($TESTS)"
timeout 150 $PY -m pytest -q -x -p no:cacheprovider $TESTS 2>&1 | tail -n 15 | tee -a "$LOG"

say "bench one GPU, K=$K, 64 px at 4 Å/px (max res 8 Å)"
timeout 150 $PY -m cryoclass -q bench --backend "$BACKEND" --n "$N64" --box 64 --pixel-size 4 \
  --classes "$K" --max-res 8 --json "$OUT/bench_64px.json" 2>&1 | tee -a "$LOG"

say "bench one GPU, K=$K, 256 px at 1 Å/px (same limits: max res 8 Å)"
timeout 150 $PY -m cryoclass -q bench --backend "$BACKEND" --n "$N256" --box 256 --pixel-size 1 \
  --classes "$K" --max-res 8 --json "$OUT/bench_256px.json" 2>&1 | tee -a "$LOG"

if [ -n "$MPIEXEC" ]; then
  say "2 ranks on one GPU: simulate $NRUN particles and classify (K=10)"
  D=$(mktemp -d)
  $PY -m cryoclass -q simulate "$D/data" --n "$NRUN" --box 64 --pixel-size 4 --diameter 150 \
    --species 1 --views-per-species 0 --snr 0.05 --junk 0.2 --duplicates 0.02 --seed 3 \
    2>&1 | tail -n 2 | tee -a "$LOG"
  CRYOCLASS_GPU_AWARE_MPI=${CRYOCLASS_GPU_AWARE_MPI:-0} timeout 200 "$MPIEXEC" -n 2 \
    $PY -m cryoclass classify "$D/data/particles.star" --out "$D/run" --classes 10 \
    --particle-diameter 150 --backend "$BACKEND" --no-plots --no-progress 2>&1 \
    | grep -E "iter |done in|rror" | cut -c1-220 | tee -a "$LOG"
  cp "$D/run/events.log" "$OUT/two_rank_events.log" 2>/dev/null || true
else
  say "no mpiexec on this machine: the 2-rank run is skipped"
fi
say "finished"
