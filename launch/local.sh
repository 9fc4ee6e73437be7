#!/usr/bin/env bash
# Run cryoclass on this machine's cores with the venv's own mpiexec (the mpich wheel).
#   bash launch/local.sh PARTICLES.star RUN_DIR [more cryoclass classify flags]
# RANKS (default: number of cores) sets the rank count.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { echo "usage: $0 PARTICLES RUN_DIR [classify flags]" >&2; exit 2; }
particles=$1; run=$2; shift 2
ranks=${RANKS:-$(nproc)}
exec "$here/.venv/bin/mpiexec" -n "$ranks" "$here/.venv/bin/cryoclass" classify \
    "$particles" --out "$run" --resume "$@"
