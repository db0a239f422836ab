"""The ``lightning-lyapunov`` command: LightningCLI with two extra subcommands.

::

    lightning-lyapunov fit -c configs/polynomial.yaml                      # train (validate/test/predict too)
    lightning-lyapunov fit -c configs/polynomial.yaml --trainer.callbacks.scheme=he   # tune the callback
    lightning-lyapunov fit -c my.yaml --trainer.callbacks+=LyapunovInit --trainer.callbacks.scheme=he
    lightning-lyapunov plan -c configs/polynomial.yaml [--scheme he]      # print the init plan, no training
    lightning-lyapunov theory --widths 2 4 --slopes 0.1                    # the theory table

``fit``/``validate``/``test``/``predict`` are LightningCLI's, with any LightningModule and
LightningDataModule as ``model``/``data`` (``class_path`` + ``init_args``). The callback is
switched on with ``trainer.callbacks`` (``class_path: lightning_lyapunov.LyapunovInit``) in the
YAML file or ``--trainer.callbacks+=LyapunovInit`` on the command line; ``--trainer.callbacks.ARG=V``
sets an argument of the last callback in the list. A value that a constructor rejects (a
``ValueError``, e.g. ``--model.init_args.lr=-1``) or an argument it does not have (a typo) is
reported like a parse error: one message and exit status 2, no traceback; so is a value of the wrong
type or not among the allowed ones (``invalid value 'lyapunv' for LyapunovInit's 'scheme': expected one
of 'lyapunov', ...``). Data that is not where the config says (a ``FileNotFoundError``, e.g. CIFAR-10
without ``data/cifar10``) ends the command with one line and exit status 1.

``plan`` takes the same arguments as ``fit``, builds the model (nothing is trained, no data is
read) and prints :func:`~lightning_lyapunov.plan_init` with the settings of the config's last
:class:`~lightning_lyapunov.LyapunovInit` callback (the defaults without one), overridden by
``--scheme``, ``--distribution``, ``--moment`` and ``--negative_slope`` (``--details=true``: every
column of the table, not the 120-column default); a look-ahead (``look_ahead:`` of the callback) is
described after the table. ``theory`` is
``python -m lightning_lyapunov.theory``.

This module imports neither torch nor Lightning: ``--help`` and ``theory`` start in a fraction of
a second; the other commands load :mod:`lightning_lyapunov.lightning_cli`.

Example (from Python; ``main`` returns instead of exiting on success)::

    from lightning_lyapunov.cli import main
    main(["plan", "-c", "configs/polynomial.yaml", "--scheme", "he"])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning_lyapunov._cli_text import PROG, help_text

__all__ = ["main"]

def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightning-lyapunov``; ``args`` defaults to ``sys.argv[1:]``.

    Returns on success (no ``sys.exit``); ``--help`` raises ``SystemExit(0)``, invalid arguments
    ``SystemExit(2)`` after printing the problem.

    Example::

        main(["theory", "--widths", "2", "--slopes", "0.1"])
    """
    argv = list(sys.argv[1:] if args is None else args)
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        (sys.stdout if command else sys.stderr).write(help_text())
        raise SystemExit(0 if command else 2)
    if command == "theory":
        from lightning_lyapunov import theory

        theory.main(argv[1:], prog=f"{PROG} theory")
        return
    from lightning_lyapunov import lightning_cli

    if command == "plan":
        cli = lightning_cli.PlanCLI(args=argv[1:])
        note = lightning_cli.fit_note(cli.spec)
        table = cli.plan.describe(details=bool(cli.config.get("details")))
        print("\n".join(part for part in (table, note, cli.look_ahead) if part))
        return
    try:
        lightning_cli.LyapunovCLI(args=argv)
    except FileNotFoundError as error:  # data not where the config says: the message says where to get it
        sys.stderr.write(f"{PROG} {command}: error: {error}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
