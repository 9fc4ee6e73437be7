#!/usr/bin/env bash
# Fetch the atomic models of the benchmark's real-structure cases from PyPI (no other
# download site is needed), as shipped in the MDAnalysisTests source distribution's test
# data: human CFTR, PDB 6MSM (a cryo-EM structure, 9,703 atoms, 66 x 81 x 132 Å), and a
# T-cell receptor bound to peptide-MHC, PDB 1BD2 (6,378 atoms, 54 x 60 x 139 Å, elongated).
#
#   bash launch/fetch_model.sh DIR   # writes DIR/6msm.pdb.bz2 and DIR/1BD2.pdb.gz (kept when present)
set -euo pipefail
DIR=$1
MDA=MDAnalysisTests==2.11.0
FILES="6msm.pdb.bz2 mmcif/1BD2.pdb.gz"
mkdir -p "$DIR"
missing=""
for f in $FILES; do [ -f "$DIR/$(basename "$f")" ] || missing="$missing $f"; done
if [ -z "$missing" ]; then exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"${PIP:-.venv/bin/pip}" download --quiet --no-deps --no-binary :all: "$MDA" -d "$TMP"
for f in $missing; do
  tar -xzf "$TMP"/*.tar.gz -C "$TMP" --wildcards "*/MDAnalysisTests/data/$f"
  mv "$TMP"/*/MDAnalysisTests/data/"$f" "$DIR/$(basename "$f")"
  echo "wrote $DIR/$(basename "$f")"
done
