"""``python -m benchmarks <name> [--quick]`` or ``python -m benchmarks all [--quick]``."""

from __future__ import annotations

import argparse
import importlib
import time

from benchmarks.common import cpu_note, write_report

BENCHMARKS = (
    "theory",
    "lln_clt",
    "deep_narrow_regression",
    "score_learning",
    "calibration",
    "empirical_variance",
    "fractional",
    "stiefel_depth",
    "conv_delta",
    "cifar",
    "overhead",
    # real data (MNIST: $LYAPUNOV_MNIST_DIR; CIFAR-10: $LYAPUNOV_CIFAR_DIR, default data/cifar10)
    "mnist_fractional",
    "cifar_variance",
    "cifar_depth",
    "mnist_stiefel",
    "cifar_cnn",
)


def run_one(name: str, quick: bool, device: str = "cpu", only: str | None = None) -> float:
    module = importlib.import_module(f"benchmarks.{name}")
    start, cpu = time.perf_counter(), time.process_time()
    options = {"device": device} if device != "cpu" else {}
    if only:
        options["only"] = only.split(",")
    report = module.run(quick=quick, **options)
    report.seconds = time.perf_counter() - start
    report.setup += cpu_note(cpu)
    for path in write_report(report, quick=quick):
        print(f"wrote {path}")
    return report.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a 2-core CPU")
    parser.add_argument("--device", default="cpu",
                        help="'cuda': the overhead benchmark's step times on the GPU (results written as overhead_cuda.*)")
    parser.add_argument("--only", metavar="GROUPS",
                        help="overhead: re-measure only these comma-separated row groups "
                             "(raw-mlp, raw-cnn, lightning, init, qr, qr-large, theory); the other rows are "
                             "kept from the table already written, marked '(previous run)'")
    args = parser.parse_args(argv)
    for option, value in (("--device", args.device != "cpu" and args.device), ("--only", args.only)):
        if value and args.name != "overhead":
            parser.error(f"{option} {value} is supported by the overhead benchmark only, not {args.name!r}")
    if args.only:
        from benchmarks.overhead import GROUPS

        unknown = sorted(set(args.only.split(",")) - set(GROUPS))
        if unknown:
            parser.error(f"--only {args.only}: unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    names = BENCHMARKS if args.name == "all" else (args.name,)
    timings = {name: run_one(name, args.quick, args.device, args.only) for name in names}
    for name, seconds in timings.items():
        print(f"{name:<24} {seconds:8.1f} s")


if __name__ == "__main__":
    main()
