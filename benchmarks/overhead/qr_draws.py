"""``overhead`` groups ``qr`` and ``qr-large``: QR-based draws against ``torch.nn.init.orthogonal_``: time and peak extra memory (issue 13).

For each case (every weight of a 100 x 1024 MLP, of the ResNet-50-shaped net, and one
``Linear(8192, 8192)``) and each method (torch's ``orthogonal_``, ours ``orthogonal_``,
``lyapunov_orthogonal_`` and ``stiefel_orthogonal_``) a fresh process draws every weight of the case
once, seeded, one torch thread, and reports the process CPU time of the draws and the peak resident
memory above what it held before the first draw (large blocks
mapped and unmapped one by one: ``MALLOC_MMAP_THRESHOLD_=65536``) (``/proc/self/status`` ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``), divided by the largest weight's size. Methods interleaved, the
order rotating per round; the time ratio to torch's ``orthogonal_`` is the median over rounds of the
per-round ratio. Linux only (the memory column is NaN elsewhere).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks._lib.stats import med_iqr

METHODS = ("torch orthogonal_", "orthogonal_", "lyapunov_orthogonal_", "stiefel_orthogonal_")

_CHILD = r"""
import json, sys, time, warnings
import torch
from torch import nn
from benchmarks._lib.package import lyapunov_orthogonal_, orthogonal_, orthogonal_gain, stiefel_orthogonal_

case, method = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
if case.startswith("Linear("):
    d = int(case[len("Linear("):].split(",")[0])
    model = nn.Linear(d, d)
else:
    from benchmarks.overhead import init_time

    model = init_time.MODELS[case]()
weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
draw = {
    "torch orthogonal_": lambda w, g: nn.init.orthogonal_(w, generator=g),
    "orthogonal_": lambda w, g: orthogonal_(w, orthogonal_gain(0.1), generator=g),
    "lyapunov_orthogonal_": lambda w, g: lyapunov_orthogonal_(w, 0.1, generator=g),
    "stiefel_orthogonal_": lambda w, g: stiefel_orthogonal_(w, generator=g),
}[method]
for w in weights[:2]:  # warm-up: libraries, allocator
    with torch.no_grad():
        draw(torch.empty(8, 8), torch.Generator().manual_seed(0))


def status(key):
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    except OSError:
        return float("nan")


try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
except OSError:
    pass
before = status("VmRSS:")
generator = torch.Generator().manual_seed(0)
start = time.process_time()
with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for w in weights:
        draw(w, generator)
seconds = time.process_time() - start
largest = max(w.numel() * w.element_size() for w in weights)
extra = status("VmHWM:") - before
print(json.dumps({"seconds": seconds, "extra": extra / largest, "extra_MB": extra / 2**20, "largest_MB": largest / 2**20}))
"""


def _one(case: str, method: str) -> dict[str, float]:
    # a fixed mmap threshold: glibc then returns every large block to the system when it is freed, so
    # the resident peak measures what was alive at once (its default threshold adapts upwards)
    root = str(Path(__file__).resolve().parents[2])  # the child imports benchmarks from this checkout
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16), "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", _CHILD, case, method], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(cases: dict[str, int]) -> list[dict[str, object]]:
    """One row per (case, method): median CPU seconds, the time ratio to torch's ``orthogonal_``
    (median over rounds, 25-75% spread) and the peak extra memory over the largest weight.
    ``cases``: ``{case: rounds}``, a case an ``init_time.MODELS`` name or ``"Linear(d, d)"``."""
    rows = []
    for case, rounds in cases.items():
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for r in range(rounds):
            for method in METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]:
                runs[method].append(_one(case, method))
        reference = [run["seconds"] for run in runs["torch orthogonal_"]]
        for method, values in runs.items():
            ratio = med_iqr([v["seconds"] / b for v, b in zip(values, reference)])
            rows.append({"case": case, "method": method, "seconds": statistics.median(v["seconds"] for v in values),
                         "ratio": ratio[0], "ratio_q25": ratio[1], "ratio_q75": ratio[2],
                         "extra_memory": max(v["extra"] for v in values),
                         "extra_MB": max(v["extra_MB"] for v in values), "largest_MB": values[0]["largest_MB"],
                         "rounds": rounds})
    return rows
