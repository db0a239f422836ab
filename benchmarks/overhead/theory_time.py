"""``overhead`` group ``theory``: the cost of ``theory.critical_scale`` (issue 2), uncached and cached calls for widths 2 .. 65,536.

Uncached: ``theory._log_moments`` and ``theory._moment`` lru caches cleared before each call
(median of a few calls); cached: the same call again (mean over many calls). Square layers,
slope 0.1: the Lyapunov scale (Gaussian and orthogonal, moment 0) and the fractional-moment
scale ``s = 1``. Wall-clock time (``time.perf_counter``): these are micro- to milliseconds.
Target: an uncached call under 50 ms.
"""

from __future__ import annotations

import statistics
import time

from benchmarks._lib.package import clear_theory_caches, theory

SLOPE = 0.1
CALLS = {
    "lyapunov gaussian": dict(distribution="gaussian", moment=0.0),
    "lyapunov orthogonal": dict(distribution="orthogonal", moment=0.0),
    "fractional s=1": dict(distribution="gaussian", moment=1.0),
}


def measure(widths: list[int], repeats: int, cached_calls: int) -> list[dict[str, object]]:
    """One row per (width, call): uncached (median of ``repeats``) and cached (mean of ``cached_calls``)
    milliseconds."""
    rows = []
    for d in widths:
        for name, kwargs in CALLS.items():
            uncached = []
            for _ in range(repeats):
                clear_theory_caches()
                start = time.perf_counter()
                theory.critical_scale(d, d, SLOPE, **kwargs)
                uncached.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(cached_calls):
                theory.critical_scale(d, d, SLOPE, **kwargs)
            cached = (time.perf_counter() - start) / cached_calls
            rows.append({"width": d, "call": name, "uncached_ms": 1e3 * statistics.median(uncached),
                         "uncached_max_ms": 1e3 * max(uncached), "cached_ms": 1e3 * cached})
    clear_theory_caches()
    return rows
