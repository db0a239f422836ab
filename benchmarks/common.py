"""What every benchmark shares: the report it returns and how it is written.

A benchmark is a module ``benchmarks/<name>.py`` with a function ``run(quick: bool) -> Report``.
``python -m benchmarks <name> [--quick]`` runs it and writes ``<name>.md``, ``<name>.csv`` and
``<name>.png`` (when there is a figure) into ``benchmarks/results/`` (``--quick``:
``benchmarks/results/quick/``, not committed).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_lyapunov import apply_init, sample_lyapunov_

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_note(cpu_start: float) -> str:
    """A setup line with the process CPU time used since ``cpu_start`` (``time.process_time()``; the
    wall time in the report's header also counts waiting for cores shared with concurrent runs)."""
    threads = torch.get_num_threads()
    return (f"\n\nCPU time of this benchmark: {time.process_time() - cpu_start:.0f} s ({threads} torch "
            f"thread{'s' if threads > 1 else ''}; the wall time in the header also includes waiting for shared cores).")


@dataclass
class Report:
    """One benchmark's outcome.

    ``setup``: seeds, sizes, optimizer, learning rates (markdown); ``rows``: the table (one dict per
    row, the same keys in every row); ``findings``: what the numbers say, plainly, including where
    Lyapunov init does not win; ``figure``: a matplotlib figure or None.
    """

    name: str
    title: str
    setup: str
    rows: list[dict[str, Any]]
    findings: str
    figure: Any = None
    seconds: float = field(default=math.nan)
    command: str | None = None  # the command line shown in the md (default: python -m benchmarks <name>)


@dataclass(frozen=True)
class Scheme:
    """One initialization as the benchmarks name it.

    ``scheme``/``distribution``/``moment`` (and ``conv`` when given) go to ``apply_init``
    (``distribution`` matters only for ``lyapunov`` and ``fractional``); ``sampled``: None, ``"network"`` (``sample_lyapunov_``, best of K
    whole networks) or ``"layerwise"`` (``layerwise=True``).
    """

    label: str
    scheme: str
    distribution: str = "orthogonal"
    moment: float | None = None
    sampled: str | None = None
    conv: str | None = None

    def apply(self, model: nn.Module, seed: int, probe: torch.Tensor | None = None) -> None:
        """Initialize ``model`` in place with the project's surgery, drawing from ``seed``; sampled
        schemes select on ``probe``. The plans' warnings (e.g. no activation after the last layer)
        are expected here and silenced."""
        generator = torch.Generator().manual_seed(seed)
        kwargs = {"scheme": self.scheme, "distribution": self.distribution, "moment": self.moment}
        if self.conv is not None:
            kwargs["conv"] = self.conv
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.sampled is None:
                apply_init(model, generator=generator, **kwargs)
            else:
                sample_lyapunov_(model, probe, layerwise=self.sampled == "layerwise", generator=generator, **kwargs)


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile) of the finite values (NaNs if there are none)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan, math.nan, math.nan
    if len(finite) == 1:
        return finite[0], finite[0], finite[0]
    q = statistics.quantiles(finite, n=4, method="inclusive")
    return statistics.median(finite), q[0], q[2]


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` significant digits, everything else as str."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def write_report(report: Report, quick: bool = False, out_dir: Path | None = None) -> list[Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.png``; return the paths written."""
    out = Path(out_dir) if out_dir is not None else (RESULTS / "quick" if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    buffer = io.StringIO()
    if report.rows:
        writer = csv.DictWriter(buffer, fieldnames=list(report.rows[0]))
        writer.writeheader()
        writer.writerows(report.rows)
    csv_path = out / f"{report.name}.csv"
    csv_path.write_text(buffer.getvalue())
    paths.append(csv_path)
    image = ""
    if report.figure is not None:
        png_path = out / f"{report.name}.png"
        report.figure.savefig(png_path, dpi=110, bbox_inches="tight")
        paths.append(png_path)
        image = f"\n![{report.title}]({png_path.name})\n"
    mode = "quick" if quick else "full"
    md_path = out / f"{report.name}.md"
    md_path.write_text(
        f"# {report.title}\n\n"
        f"`{report.command or f'python -m benchmarks {report.name}'}{' --quick' if quick else ''}` ({mode} run, "
        f"{report.seconds:.0f} s on a 2-core CPU)\n\n"
        f"## Setup\n\n{report.setup.strip()}\n\n"
        f"## Results\n\n{markdown_table(report.rows)}\n{image}\n"
        f"## Findings\n\n{report.findings.strip()}\n"
    )
    paths.append(md_path)
    return paths
