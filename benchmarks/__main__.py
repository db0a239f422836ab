"""``python -m benchmarks <name> [--quick]``, ``python -m benchmarks all [--quick]``.

The runner owns the process: one torch thread (``--threads``), matplotlib's Agg backend, the CPU time of
every run (stated in its report and, for the full runs, in the README tables).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import matplotlib
import torch

from benchmarks._lib import catalogue, engine
from benchmarks._lib.report import RESULTS, Report, write_report

OPTIONS = ("device", "only")  # options only some benchmarks take (checked against their run())


def cpu_time() -> float:
    """CPU seconds of this process and its finished children (the QR timing children of ``overhead``)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_one(module: ModuleType, quick: bool, out_dir: Path | None = None, **options) -> Report:
    """Run one benchmark at its quick or full size, fill in its CPU and wall time, write its files."""
    name = module.__name__.rsplit(".", 1)[-1]
    accepted = inspect.signature(module.run).parameters
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SystemExit(f"{name} does not take {', '.join('--' + k for k in unknown)}")
    out = out_dir or (RESULTS / "quick" if quick else RESULTS)
    if "results_dir" in accepted:
        options["results_dir"] = out
    start, cpu, resumed = time.perf_counter(), cpu_time(), engine.resumed_cpu_seconds()
    report = module.run(module.SIZES.quick if quick else module.SIZES.full, **options)
    report.earlier_cpu_seconds += engine.resumed_cpu_seconds() - resumed  # trainings resumed from checkpoints
    report.cpu_seconds = cpu_time() - cpu + report.earlier_cpu_seconds  # + cached work read back
    report.seconds = time.perf_counter() - start
    for path in write_report(report, quick=quick, out_dir=out):
        print(f"wrote {path}")
    return report


def main(argv: list[str] | None = None) -> None:
    matplotlib.use("Agg")  # before the benchmarks (imported by the registry) import pyplot
    registry = catalogue.registry()
    listing = "\n".join(f"  {name:<24} {module.TITLE}" for name, module in registry.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"benchmarks:\n{listing}\n\n`python -m benchmarks <name> --sizes` shows its quick and full sizes; "
               "benchmarks/README.md is the catalogue.")
    parser.add_argument("name", nargs="?", choices=(*registry, "all"), metavar="name",
                        help="a benchmark (listed below) or 'all'")
    parser.add_argument("--quick", action="store_true", help="the quick sizes: seconds, results in results/quick/")
    parser.add_argument("--sizes", action="store_true", help="print the benchmark's quick and full sizes and exit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the results here instead of benchmarks/results[/quick]")
    parser.add_argument("--device", help="overhead: 'cuda' measures the step times on the GPU (overhead_cuda.*)")
    parser.add_argument("--only", metavar="GROUPS",
                        help="overhead: re-measure only these comma-separated row groups; the other rows are kept "
                             "from the table already written, marked '(previous run)'")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the generated tables of README.md and benchmarks/README.md from the result files")
    args = parser.parse_args(argv)
    if args.readme:
        for path in catalogue.write_readmes(registry):
            print(f"updated {path}")
        return
    if args.name is None:
        parser.print_help()
        sys.exit(2)
    names = list(registry) if args.name == "all" else [args.name]
    if args.sizes:
        for name in names:
            print(f"{name}:\n{registry[name].SIZES.describe()}\n")
        return
    torch.set_num_threads(args.threads)
    options = {"device": None if args.device in (None, "cpu") else args.device,
               "only": args.only.split(",") if args.only else None}
    reports = {name: run_one(registry[name], args.quick, args.out, **options) for name in names}
    for name, report in reports.items():
        print(f"{name:<24} CPU {report.cpu_seconds:8.1f} s   wall {report.seconds:8.1f} s")


if __name__ == "__main__":
    main()
