#!/bin/bash
# cryoclass under PBS Pro / OpenPBS: one rank per GPU.
#   qsub -v PARTICLES=/data/particles.star,RUN=/scratch/run1 launch/pbs.sh
#PBS -N cryoclass
#PBS -l select=2:ncpus=32:ngpus=4:mpiprocs=4
#PBS -l walltime=04:00:00
#PBS -j oe
set -uo pipefail
cd "$PBS_O_WORKDIR"
module load openmpi 2>/dev/null || true
source "${CRYOCLASS_ENV:-$HOME/cryoclass-env}/bin/activate"
: "${PARTICLES:?set PARTICLES}" "${RUN:?set RUN}"
# PBS sends SIGTERM before killing at the walltime: cryoclass checkpoints and exits 75;
# submit the same script again to continue (--resume).
mpirun -np "$(wc -l < "$PBS_NODEFILE")" cryoclass classify "$PARTICLES" --out "$RUN" \
       --resume ${CRYOCLASS_FLAGS:-}
