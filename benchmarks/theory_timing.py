"""Cost of ``theory.critical_scale`` (issue 2): uncached and cached calls for widths 2 .. 65,536.

Uncached: ``theory._log_moments`` and ``theory._moment`` lru caches cleared before each call
(median of a few calls); cached: the same call again (mean over many calls). Square layers,
slope 0.1: the Lyapunov scale (Gaussian and orthogonal, moment 0) and the fractional-moment
scale ``s = 1``. Wall-clock time (``time.perf_counter``): these are micro- to milliseconds.
Target: an uncached call under 50 ms.

``python -m benchmarks.theory_timing [--quick]`` prints the table; ``overhead`` includes it.
"""

from __future__ import annotations

import statistics
import sys
import time

from lightning_lyapunov import theory

SLOPE = 0.1
CALLS = {
    "lyapunov gaussian": dict(distribution="gaussian", moment=0.0),
    "lyapunov orthogonal": dict(distribution="orthogonal", moment=0.0),
    "fractional s=1": dict(distribution="gaussian", moment=1.0),
}


def _clear() -> None:
    theory._log_moments.cache_clear()
    theory._moment.cache_clear()


def measure(quick: bool = False) -> list[dict[str, object]]:
    """One row per (width, call): uncached and cached milliseconds."""
    widths = [2**k for k in range(1, 17)]
    if quick:
        widths = widths[::3]  # 2, 16, 128, 1024, 8192, 65536
    repeats, cached_calls = (3, 200) if quick else (7, 2000)
    rows = []
    for d in widths:
        for name, kwargs in CALLS.items():
            uncached = []
            for _ in range(repeats):
                _clear()
                start = time.perf_counter()
                theory.critical_scale(d, d, SLOPE, **kwargs)
                uncached.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(cached_calls):
                theory.critical_scale(d, d, SLOPE, **kwargs)
            cached = (time.perf_counter() - start) / cached_calls
            rows.append({"width": d, "call": name, "uncached_ms": 1e3 * statistics.median(uncached),
                         "uncached_max_ms": 1e3 * max(uncached), "cached_ms": 1e3 * cached})
    _clear()
    return rows


def main() -> None:
    from benchmarks.common import markdown_table

    print(markdown_table(measure(quick="--quick" in sys.argv[1:])))


if __name__ == "__main__":
    main()
