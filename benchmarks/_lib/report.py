"""What every benchmark returns and how it is written.

A benchmark is a module ``benchmarks/<name>.py`` (or a package) with ``TITLE`` (one line),
``SIZES = Sizes(quick=..., full=...)`` (its two configurations side by side) and
``run(size) -> Report``. ``python -m benchmarks <name> [--quick]`` runs it with ``SIZES.full``
(``SIZES.quick``) and writes into ``benchmarks/results/`` (``--quick``: ``benchmarks/results/quick/``,
not committed):

* ``<name>.md``: the command, its CPU time, a computed summary, the setup, the table, the findings;
* ``<name>.csv``: the finest rows the report keeps: one row per run (scheme, seed, ...) for the
  benchmarks that train or draw seeded runs, so every table can be recomputed; else the table;
* ``<name>_table.csv``: the md's table, when ``<name>.csv`` holds the runs;
* ``<name>.png``: the figure, if any.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

RESULTS = Path(__file__).resolve().parents[1] / "results"

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes(Generic[T]):
    """A benchmark's two configurations, side by side: ``quick`` (a few seconds, run by the tests) and
    ``full`` (the committed results). Both are instances of the benchmark's own frozen dataclass."""

    quick: T
    full: T

    def describe(self) -> str:
        """A two-column text table ``field  quick  full``."""
        names = [f.name for f in fields(self.full)]  # type: ignore[arg-type]
        width = max(len(n) for n in names)
        lines = [f"{'':<{width}}  {'quick':<24} full"]
        for n in names:
            lines.append(f"{n:<{width}}  {str(getattr(self.quick, n)):<24} {getattr(self.full, n)}")
        return "\n".join(lines)


@dataclass
class Report:
    """One benchmark's outcome.

    ``setup``: data, seeds, sizes, optimizer, learning rates (markdown); ``rows``: the table (one dict
    per row, the same keys in every row); ``findings``: what the numbers say, every comparison computed
    by :mod:`benchmarks._lib.stats`; ``summary``: the few computed sentences the README shows;
    ``runs``: one dict per run (scheme, seed, ... and its numbers), from which the table can be
    recomputed; ``figure``: a matplotlib figure or None. The runner fills ``cpu_seconds`` and ``seconds``;
    ``earlier_cpu_seconds``: the CPU time of work done in earlier processes whose results the benchmark
    read back (cached cells), which the runner adds to the CPU time it measures (NaN: not recorded, and
    then neither is the report's CPU time).
    """

    name: str
    title: str
    setup: str
    rows: list[dict[str, Any]]
    findings: str | Sequence[str]
    figure: Any = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    cpu_seconds: float = math.nan
    seconds: float = math.nan
    earlier_cpu_seconds: float = 0.0
    command: str | None = None  # the command line shown in the md (default: python -m benchmarks <name>)


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


def bullets(lines: Iterable[str]) -> str:
    """Markdown list items (``"- "`` added where missing), empty lines dropped."""
    return "\n".join(line if line.startswith("- ") else f"- {line}" for line in lines if line)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def header(report: Report, quick: bool) -> str:
    """The md's second line: command, mode, CPU time (one torch thread) and wall time."""
    command = report.command or f"python -m benchmarks {report.name}"
    mode = "quick" if quick else "full"
    if math.isnan(report.cpu_seconds):  # work read back without its CPU time
        cpu = "CPU time not recorded"
    else:
        cpu = f"CPU time {report.cpu_seconds:.0f} s" + (
            f" ({report.earlier_cpu_seconds:.0f} s of it in earlier processes, read back)"
            if report.earlier_cpu_seconds else "")
    return (f"`{command}{' --quick' if quick else ''}` ({mode} run: {cpu}, "
            f"one torch thread; wall time {report.seconds:.0f} s on a shared 2-core CPU)")


def write_report(report: Report, quick: bool = False, out_dir: Path | None = None) -> list[Path]:
    """Write ``<name>.md``, ``<name>.csv`` (+ ``<name>_table.csv``) and ``<name>.png``; return the paths."""
    out = Path(out_dir) if out_dir is not None else (RESULTS / "quick" if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tables = {report.name: report.runs or report.rows}
    if report.runs:
        tables[f"{report.name}_table"] = report.rows
    for stem, rows in tables.items():
        path = out / f"{stem}.csv"
        path.write_text(csv_text(rows))
        paths.append(path)
    image = ""
    if report.figure is not None:
        png_path = out / f"{report.name}.png"
        report.figure.savefig(png_path, dpi=110, bbox_inches="tight")
        paths.append(png_path)
        image = f"\n![{report.title}]({png_path.name})\n"
        import matplotlib.pyplot as plt

        plt.close(report.figure)
    findings = report.findings if isinstance(report.findings, str) else bullets(report.findings)
    summary = f"## Summary\n\n{bullets(report.summary)}\n\n" if report.summary else ""
    runs_note = (f"\n\nOne row per run in `{report.name}.csv`; this table in `{report.name}_table.csv`."
                 if report.runs else "")
    md_path = out / f"{report.name}.md"
    md_path.write_text(
        f"# {report.title}\n\n{header(report, quick)}\n\n{summary}"
        f"## Setup\n\n{report.setup.strip()}\n\n"
        f"## Results\n\n{markdown_table(report.rows)}{runs_note}\n{image}\n"
        f"## Findings\n\n{findings.strip()}\n"
    )
    paths.append(md_path)
    return paths
