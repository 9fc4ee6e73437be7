#!/usr/bin/env bash
# Fetch the atomic model of the benchmark's real-structure case from PyPI (no other
# download site is needed): human CFTR, PDB 6MSM (a cryo-EM structure, 9,703 atoms,
# 66 x 81 x 132 Å), as shipped in the MDAnalysisTests source distribution's test data.
#
#   bash launch/fetch_model.sh DIR      # writes DIR/6msm.pdb.bz2 (skipped when present)
set -euo pipefail
DIR=$1
MDA=MDAnalysisTests==2.11.0
FILE=6msm.pdb.bz2
mkdir -p "$DIR"
if [ -f "$DIR/$FILE" ]; then exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"${PIP:-.venv/bin/pip}" download --quiet --no-deps --no-binary :all: "$MDA" -d "$TMP"
tar -xzf "$TMP"/*.tar.gz -C "$TMP" --wildcards "*/MDAnalysisTests/data/$FILE"
mv "$TMP"/*/MDAnalysisTests/data/$FILE "$DIR/$FILE"
echo "wrote $DIR/$FILE"
