"""The registry of benchmarks and the README tables generated from their result files.

A benchmark is every module or package ``benchmarks/<name>`` whose name does not start with ``_``;
it defines ``TITLE``, ``SIZES`` and ``run(size)`` (:func:`registry` checks it). The README tables
between ``<!-- benchmarks:<table> -->`` and ``<!-- /benchmarks:<table> -->`` are written by
``python -m benchmarks --readme`` from ``benchmarks/results/`` and checked by the tests, so a number in
them is always the result file's.
"""

from __future__ import annotations

import csv
import importlib
import math
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

from benchmarks._lib.report import RESULTS

ROOT = Path(__file__).resolve().parents[2]
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")


def registry() -> dict[str, ModuleType]:
    """Every benchmark by name (alphabetical), each checked for ``TITLE``, ``SIZES`` and ``run``."""
    import benchmarks

    out = {}
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        missing = [attr for attr in ("TITLE", "SIZES", "run") if not hasattr(module, attr)]
        if missing:
            raise TypeError(f"benchmarks/{info.name} is not a benchmark: it lacks {', '.join(missing)} (helper "
                            "libraries belong in benchmarks/_lib/)")
        out[info.name] = module
    return dict(sorted(out.items()))


@dataclass
class Result:
    """What a result file says about its run: CPU and wall seconds (None: not recorded), the computed
    summary (empty for results written before the summaries existed)."""

    cpu_seconds: float | None
    wall_seconds: float | None
    summary: list[str]
    partial: str = ""  # the ``--only`` groups of a partial rerun


def read_result(md: Path) -> Result | None:
    """Parse ``<name>.md`` (None if there is none)."""
    if not md.exists():
        return None
    text = md.read_text()
    header = text.splitlines()[2] if len(text.splitlines()) > 2 else ""
    cpu = re.search(r"CPU time (\d+(?:\.\d+)?) s", header) or re.search(r"CPU time of this benchmark: (\d+) s", text)
    wall = re.search(r"wall time (\d+) s", header) or re.search(r"run, (\d+) s on a 2-core CPU", header)
    summary = []
    if "\n## Summary\n" in text:
        block = text.split("\n## Summary\n", 1)[1].split("\n## ", 1)[0]
        summary = [line[2:].strip() for line in block.strip().splitlines() if line.startswith("- ")]
    only = re.search(r"--only ([\w,-]+)", header)
    return Result(float(cpu.group(1)) if cpu else None, float(wall.group(1)) if wall else None, summary,
                  only.group(1) if only else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _seconds(result: Result | None) -> str:
    if result is None:
        return "not run"
    if result.cpu_seconds is not None:
        return f"{result.cpu_seconds:.0f} s" + (f" (rerun of `--only {result.partial}`)" if result.partial else "")
    return f"not recorded (wall {result.wall_seconds:.0f} s)" if result.wall_seconds is not None else "not recorded"


def _sizes(module: ModuleType) -> str:
    quick, full = module.SIZES.quick, module.SIZES.full
    parts = []
    for f in fields(full):
        q, v = getattr(quick, f.name), getattr(full, f.name)
        parts.append(f"{f.name} {v}" if q == v else f"{f.name} {_short(q)} / {_short(v)}")
    return "; ".join(parts)


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def catalogue_table(registry_: dict[str, ModuleType], results: Path = RESULTS, link: str = "results/") -> str:
    """One row per benchmark: name (linked to its report), title, its computed summary and the CPU time of
    its last full run, read from ``results``."""
    lines = ["| benchmark | what | summary of the last full run (computed) | CPU time |", "|---|---|---|---:|"]
    for name, module in registry_.items():
        result = read_result(results / f"{name}.md")
        if result is None:
            summary = "not run yet"
        elif result.summary:
            summary = "<br>".join(_cell(s) for s in result.summary)
        else:
            summary = "written before the computed summaries (issue 24): see the report; rerun pending"
        lines.append(f"| [{name}]({link}{name}.md) | {_cell(module.TITLE)} | {summary} | {_seconds(result)} |")
    return "\n".join(lines)


def sizes_table(registry_: dict[str, ModuleType]) -> str:
    """One row per benchmark: its sizes, ``quick / full`` side by side."""
    lines = ["| benchmark | sizes (quick / full) |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(_sizes(module))} |" for name, module in registry_.items()]
    return "\n".join(lines)


def _met(value: float, target: str) -> str:
    """``"met"`` / ``"missed"`` for a target like ``"<= 1.5x"``, ``"< 3x (issue 3)"`` or ``"uncached < 50 ms"``."""
    match = re.search(r"(<=?)\s*([\d.]+)", target)
    if match is None or not math.isfinite(value):
        return ""
    bound = float(match.group(2))
    return "met" if (value <= bound if match.group(1) == "<=" else value < bound) else "missed"


def overhead_table(results: Path = RESULTS) -> str:
    """The overhead ratios against their targets, from ``overhead.csv`` (``critical_scale``: the slowest
    uncached call over the widths, per call)."""
    path = results / "overhead.csv"
    if not path.exists():
        return "(overhead not run yet)"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    lines = ["| group | case | measured [q25, q75] | target | |", "|---|---|---:|---|---|"]
    theory: dict[str, float] = {}
    for r in rows:
        if r["group"] == "theory.critical_scale":
            call = r["case"].split(": ", 1)[1].removesuffix(" (previous run)")
            theory[call] = max(theory.get(call, 0.0), float(r["ms"]))
            continue
        ratio, lo, hi = (float(r[k]) for k in ("ratio", "ratio_q25", "ratio_q75"))
        spread = f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
        reference = ": torch orthogonal_" in r["case"]  # torch's own QR init: a reference (older tables gave it a target)
        target = "-" if reference or not r["target"] else r["target"]
        measured = (f"{ratio:.2f}x{spread}" if r["target"] or reference else  # no target: a time against its reference
                    f"{float(r['ms']):.3g} MB, {ratio:.3g} KB per step" if r["group"].startswith("memory") else
                    f"{float(r['ms']):.3g} ms against {float(r['reference_ms']):.3g} ms ({ratio:.3g}x)")
        lines.append(f"| {_cell(r['group'])} | {_cell(r['case'])} | {measured} | {_cell(target)} | "
                     f"{_met(ratio, target)} |")
    for call, ms in theory.items():
        lines.append(f"| theory.critical_scale | {call}, uncached, slowest width | {ms:.2f} ms | < 50 ms | "
                     f"{_met(ms, '< 50')} |")
    return "\n".join(lines)


def _by_method(rows: list[dict[str, str]], method: str, column: Callable[[dict[str, str]], str],
               value: Callable[[dict[str, str]], str], bold: Callable[[str], bool], lead: str | None = None) -> str:
    """A markdown table of ``rows``: one line per ``row[method]`` (in order of appearance), one column
    per ``column(row)`` holding ``value(row)`` (``-`` where none), the methods ``bold`` picks in bold;
    ``lead``: a column of the method's first row put before the others (right-aligned)."""
    columns = list(dict.fromkeys(column(r) for r in rows))
    cells = {(r[method], column(r)): value(r) for r in rows}
    first = {r[method]: r for r in reversed(rows)}
    lines = ["| method | " + (f"{lead} | " if lead else "") + " | ".join(columns) + " |",
             "|---|" + ("---:|" if lead else "") + "---|" * len(columns)]
    for name in dict.fromkeys(r[method] for r in rows):
        b = "**" if bold(name) else ""
        lines.append(f"| {b}{_cell(name)}{b} | " + (f"{first[name][lead]} | " if lead else "") + " | ".join(
            f"{b}{cells.get((name, c), '-')}{b}" for c in columns) + " |")
    return "\n".join(lines)


def _result_rows(results: Path, name: str) -> list[dict[str, str]] | None:
    """The rows of ``results/<name>.csv`` (None when that benchmark has not run)."""
    path = results / f"{name}.csv"
    if not path.exists():
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def lookahead_table(results: Path = RESULTS, highlight: str = "look-ahead") -> str:
    """Trained seeds [95% Wilson] per method (rows) and cell (columns), from ``lookahead_table.csv`` (the
    methods whose name starts with ``highlight`` in bold)."""
    rows = _result_rows(results, "lookahead_table")
    if rows is None:
        return "(lookahead not run yet)"
    return _by_method(rows, "scheme", lambda r: f"{r['task']} {r['shape']}", lambda r: r["trained [95% Wilson]"],
                      lambda name: name.startswith(highlight), lead="extra steps")


def calibration_table(results: Path = RESULTS, protocol: str = "lr 1e-3") -> str:
    """Trained seeds [95% Wilson] and median test loss per method (rows) and task (columns) at one
    ``protocol``, from ``calibration_table.csv`` (the callback's default in bold)."""
    rows = _result_rows(results, "calibration_table")
    if rows is None:
        return "(calibration not run yet)"
    return _by_method([r for r in rows if r["protocol"] == protocol], "method", lambda r: r["task"],
                      lambda r: f"{r['trained']}, {float(r['test median']):.3g}", lambda name: "default" in name)


def targets_table(results: Path = RESULTS) -> str:
    """What the output scale (``calibrate_target``) does, one row per setting and one column per target
    (largest first), from ``scripts/lookahead_targets.py``'s files (:func:`benchmarks.lookahead.targets_rows`)."""
    from benchmarks.lookahead import targets_rows

    rows = targets_rows(results)
    if not rows:
        return "(scripts/lookahead_targets.py not run yet)"
    order = sorted({float(r["target"]) for r in rows}, reverse=True)
    rows.sort(key=lambda r: order.index(float(r["target"])))
    table = _by_method(rows, "setting", lambda r: f"target {r['target']}", lambda r: r["value"], lambda name: False)
    return table.replace("| method |", "| setting |", 1)


def tables(registry_: dict[str, ModuleType], readme: Path, results: Path = RESULTS) -> dict[str, str]:
    """The generated tables of ``readme`` by marker name (links relative to that README; the look-ahead's
    and the calibration's trained counts and the targets' table in the top README only)."""
    top = readme.parent == ROOT
    link = "benchmarks/results/" if top else "results/"
    return {"catalogue": catalogue_table(registry_, results, link), "sizes": sizes_table(registry_),
            "overhead": overhead_table(results),
            **({"lookahead": lookahead_table(results), "calibration": calibration_table(results),
                "targets": targets_table(results)} if top else {})}


def fill(text: str, generated: dict[str, str]) -> str:
    """``text`` with every ``<!-- benchmarks:NAME -->`` ... ``<!-- /benchmarks:NAME -->`` block replaced."""
    for name, table in generated.items():
        pattern = re.compile(rf"(<!-- benchmarks:{name} -->\n)(?:.*?\n)?(<!-- /benchmarks:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def write_readmes(registry_: dict[str, ModuleType], results: Path = RESULTS) -> list[Path]:
    """Rewrite the generated blocks of both READMEs; return the files changed."""
    changed = []
    for readme in READMES:
        text = readme.read_text()
        new = fill(text, tables(registry_, readme, results))
        if new != text:
            readme.write_text(new)
            changed.append(readme)
    return changed
