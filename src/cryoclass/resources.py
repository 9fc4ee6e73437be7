"""Memory of this process, for the per-rank logs and the memory benchmark.

``log_memory("after preprocessing")`` writes one DEBUG line (peak and current resident
memory, anonymous vs file-backed) to the rank's log, so a run's log shows which phase sets
its peak.
"""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Return the peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def rss_now_mb() -> dict[str, float]:
    """Return the current resident memory (MB): ``RssAnon`` (heap), ``RssFile`` (files)."""
    now = {"RssAnon": float("nan"), "RssFile": float("nan")}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon:", "RssFile:")):
                    now[line.split(":")[0]] = float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return now


def log_memory(label: str) -> None:
    """Log (DEBUG) the peak and current memory after a phase."""
    now = rss_now_mb()
    logger.debug("memory %s: peak %.0f MB, now %.0f MB anonymous + %.0f MB file-backed",
                 label, peak_rss_mb(), now["RssAnon"], now["RssFile"])
