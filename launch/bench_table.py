"""One markdown table of the hard accuracy benchmark: metric | RELION 3.1 | cryoclass.

    python launch/bench_table.py --case "SNR 0.05, N 4000, K 10" \
        --cryoclass bench_accuracy/snr0.05_n4000_k10/cryoclass_k10 \
        --relion bench_accuracy/snr0.05_n4000/relion_k10 --out table.md

Each directory holds ``evaluate.json`` (``cryoclass evaluate --json``) and ``timing.txt``
(``wall_s:``, ``uptime before:``, ``uptime after:`` lines, as written by
``launch/bench_accuracy.sh`` and ``launch/bench_relion.sh``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

#: (key, label, format, better, target of issue 11 at SNR 0.05 / K 10); better: "low",
#: "high" or "" (no direction).
ROWS = (
    ("junk_in_good_classes", "junk in good-majority classes", ".3f", "low", "<= 0.15"),
    ("junk_in_good_classes_noise", "  ... pure noise", ".3f", "low", ""),
    ("junk_in_good_classes_off_centre", "  ... off-centre", ".3f", "low", ""),
    ("junk_in_good_classes_broken", "  ... broken particle", ".3f", "low", ""),
    ("junk_in_good_classes_other_particle", "  ... other particle", ".3f", "low", ""),
    ("good_in_junk_classes", "good in junk-majority classes", ".3f", "low", "<= 0.05"),
    ("good_classes", "good-majority classes", "d", "", ""),
    ("junk_classes", "junk-majority classes", "d", "", ""),
    ("view_spread_deg", "view spread (deg)", ".1f", "low", ""),
    ("view_spread_random_deg", "view spread, permuted labels (deg)", ".1f", "", ""),
    ("view_spread_ratio", "view spread / random", ".3f", "low", "<= 0.75"),
    ("view_spread_z", "... std below permuted labels (permutation test)", ".1f", "high", ""),
    ("view_spread_p_value", "... one-sided p (199 permutations; min 0.005)", ".3f", "low", ""),
    ("view_axial_spread_deg", "view spread blind to sign (deg)", ".1f", "low", ""),
    ("view_axial_spread_random_deg", "... permuted labels (deg)", ".1f", "", ""),
    ("opposite_view_fraction", "members seen from the opposite side (0.5 = mirror mix)",
     ".3f", "low", ""),
    ("inplane_circular_std_deg", "in-plane circular std (deg)", ".1f", "low", "<= 45"),
    ("class_projection_ncc", "class average vs true projection, NCC", ".3f", "high", ""),
    ("class_projection_ncc_min", "  ... worst class", ".3f", "high", ""),
    ("streak_index_mean", "streak index, mean (1 = isotropic noise)", ".2f", "low", ""),
    ("streak_index_max", "streak index, max", ".2f", "low", ""),
    ("streaky_classes", "streaky classes (index >= 2)", "d", "low", "0"),
    ("streak_index_noise", "streak index of white noise (reference, about 1)", ".2f", "", ""),
    ("duplicate_pairs_resolved", "duplicate pairs resolved", ".3f", "high", ""),
    ("populated_classes", "classes with >= 1% of the particles", "d", "", ""),
)


def _timing(path: Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(": ")
            out[key] = value
    return out


def _load(path: Path) -> float | None:
    m = re.search(r"load average: ([\d.]+)", path)
    return float(m.group(1)) if m else None


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "nan"
    return format(value, fmt)


def table(case: str, cryoclass: Path, relion: Path | None) -> str:
    """Markdown text of one case."""
    c = json.loads((cryoclass / "evaluate.json").read_text())
    r = json.loads((relion / "evaluate.json").read_text()) if relion else {}
    tc, tr = _timing(cryoclass / "timing.txt"), _timing(relion / "timing.txt") if relion else {}
    lines = [f"### {case}", "", "| metric | RELION 3.1 | cryoclass | target (issue 11) |",
             "|---|---|---|---|"]
    for key, label, fmt, _, target in ROWS:
        lines.append(f"| {label} | {_fmt(r.get(key), fmt)} | {_fmt(c.get(key), fmt)} | "
                     f"{target} |")
    w_c = float(tc["wall_s"]) if "wall_s" in tc else None
    w_r = float(tr["wall_s"]) if "wall_s" in tr else None
    lines.append(f"| wall time (s) | {_fmt(w_r, '.0f')} | {_fmt(w_c, '.0f')} | |")
    for when in ("before", "after"):
        lr = _load(tr.get(f"uptime {when}", ""))
        lc = _load(tc.get(f"uptime {when}", ""))
        lines.append(f"| 1-min load average {when} | {_fmt(lr, '.2f')} | {_fmt(lc, '.2f')} | |")
    if w_c and w_r:
        lines += ["", f"Wall-time ratio RELION / cryoclass: {w_r / w_c:.2f}"]
    lines += ["", f"cryoclass: `{tc.get('command', '?')}` at {tc.get('commit', '?')}"]
    if relion:
        lines.append(f"RELION: `relion_refine_mpi {tr.get('ARGS', '?')}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write (and print) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True)
    ap.add_argument("--cryoclass", required=True, type=Path)
    ap.add_argument("--relion", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    text = table(a.case, a.cryoclass, a.relion)
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
