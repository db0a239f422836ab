"""The words of the ``lightning-lyapunov`` command, shared by :mod:`lightning_lyapunov.cli` (which starts
without torch or Lightning) and :mod:`lightning_lyapunov.lightning_cli` (LightningCLI's parsers)."""

from __future__ import annotations

__all__ = ["DESCRIPTION", "EXTRA_COMMANDS", "LIGHTNING_COMMANDS", "PROG", "USAGE", "help_text"]

PROG = "lightning-lyapunov"
DESCRIPTION = "Train deep narrow networks with LyapunovInit (LightningCLI), plan their init, or print the theory."
LIGHTNING_COMMANDS = {
    "fit": "Train a model (LightningCLI's fit).",
    "validate": "Run one evaluation epoch over the validation set.",
    "test": "Run one evaluation epoch over the test set.",
    "predict": "Run inference on the predict set.",
}
EXTRA_COMMANDS = {
    "plan": "Print the initialization plan of a config's model (same arguments as fit); trains nothing.",
    "theory": "Print the theory table (Lyapunov exponents and critical scales by width and slope).",
}
USAGE = "%(prog)s [-h] [-c CONFIG] [--print_config[=flags]] [--KEY VALUE ...]"


def help_text() -> str:
    """The top-level ``--help``: the commands and where to find their arguments."""
    commands = {**LIGHTNING_COMMANDS, **EXTRA_COMMANDS}
    rows = "\n".join(f"    {name:<10}{text}" for name, text in commands.items())
    return (
        f"usage: {PROG} [-h] {{{','.join(commands)}}} ...\n\n{DESCRIPTION}\n\ncommands:\n{rows}\n\n"
        f"Each command has its own --help, e.g.\n"
        f"    {PROG} fit --help                                # every Trainer, model and data argument\n"
        f"    {PROG} fit --trainer.callbacks.help LyapunovInit  # the callback's arguments\n"
        f"    {PROG} fit -c configs/polynomial.yaml             # train with a config\n"
    )
