"""Diagnostics: per-iteration figures, per-class junk metrics and the HTML run report.

Nothing here imports matplotlib or h5py until a function needs it, so importing
cryoclass stays cheap and configures nothing.

* :class:`DiagnosticsWriter` (rank 0, from ``classify(on_iteration=...)``): draws each
  iteration's figures on a background thread via :func:`iteration_diagnostics` (figures
  and the data behind them, under ``RUN/figures/``).
* :func:`write_final_figures`: final figures from ``run.h5``.
* :func:`class_metrics`: per-class junk indicators.
* :func:`build_report` / :func:`main_report`: ``RUN/report.html`` (``cryoclass report RUN``).
"""

from cryoclass.report.figures import (
    DiagnosticsWriter,
    iteration_diagnostics,
    write_final_figures,
    write_iteration_figures,
)
from cryoclass.report.html import build_report, main_report
from cryoclass.report.metrics import class_metrics

__all__ = ["DiagnosticsWriter", "build_report", "class_metrics", "iteration_diagnostics",
           "main_report", "write_final_figures", "write_iteration_figures"]
