"""The Lightning half of the ``lightning-lyapunov`` command (see :mod:`lightning_lyapunov.cli`).

:class:`LyapunovCLI` is LightningCLI with any LightningModule / LightningDataModule, constructor
``ValueError`` s reported like parse errors, and an unknown constructor argument in a config
reported as ``unknown argument 'distributon' of LyapunovInit, did you mean 'distribution'?``;
:class:`PlanCLI` is ``lightning-lyapunov plan``. Imported only by the commands that need Lightning,
so ``lightning-lyapunov --help`` and ``theory`` start without it.

Example::

    cli = LyapunovCLI(args=["-c", "configs/digits.yaml"], run=False)   # instantiate only
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_lyapunov._cli_text import DESCRIPTION, EXTRA_COMMANDS, PROG, USAGE
from lightning_lyapunov._lifecycle import check_single
from lightning_lyapunov.callbacks import LyapunovInit
from lightning_lyapunov.init import DISTRIBUTIONS, SCHEMES
from lightning_lyapunov.settings import InitSpec
from lightning_lyapunov.surgery import plan_init

__all__ = ["LyapunovCLI", "PlanCLI", "invalid_value_message", "unknown_argument_message"]

#: ``plan``'s command-line overrides of the callback's settings (the rest come from the config).
_OVERRIDES = ("scheme", "distribution", "moment", "negative_slope")
_CLI_HINT = ("tune the config's callback with --trainer.callbacks.scheme=... instead of adding another with "
             "--trainer.callbacks+=LyapunovInit")


def _parser_kwargs() -> dict[str, Any]:
    """Main parser: name and description; subcommands: a one-line usage (the full one lists every
    Trainer argument and buries the error message under it)."""
    commands = LightningCLI.subcommands()
    return {"prog": PROG, "description": DESCRIPTION, **{name: {"usage": USAGE} for name in commands}}


_NOT_ACCEPTED = re.compile(r"Problem with given class_path '([\w.]+)':\s*\n\s*Option '([^']+)' is not accepted")


def unknown_argument_message(message: str) -> str | None:
    """``unknown argument 'X' of Class, did you mean 'Y'?`` for jsonargparse's union error about a
    constructor argument that does not exist (a typo in a config), or None for other errors.

    Only the first class path's problem counts: jsonargparse then tries the base class
    (``lightning.Callback``), which accepts no argument at all."""
    first = message.find("Problem with given class_path")
    found = _NOT_ACCEPTED.match(message, first) if first >= 0 else None
    if found is None:
        return None
    class_path, argument = found.groups()
    module_name, _, name = class_path.rpartition(".")
    try:
        parameters = list(inspect.signature(getattr(importlib.import_module(module_name), name)).parameters)
    except Exception:  # noqa: BLE001 - the original message is still there to fall back on
        return None
    parameters = [p for p in parameters if p not in ("self", "args", "kwargs")]
    close = difflib.get_close_matches(argument, parameters, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"its arguments are {', '.join(parameters)}"
    return f"unknown argument {argument!r} of {name}, {hint}"


_KEY = re.compile(r'Parser key "([^"]+)":')
_EXPECTED = re.compile(r"Expected an? (.+?)(?:\. Got value: (.*))?$", re.MULTILINE)
_GIVEN = re.compile(r"Given value: (.*)$", re.MULTILINE)
_ONE_LINE = re.compile(r"invalid value (.+?) for ('[^']+': expected .*)$", re.MULTILINE)


def _allowed(kind: str) -> str:
    """``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``; ``<class 'float'>`` -> ``a float``; NoneType -> ``None``."""
    if kind.startswith("typing.Literal["):
        return "one of " + kind[len("typing.Literal["):-1]
    found = re.fullmatch(r"<class '([\w.]+)'>", kind)
    name = found.group(1).rsplit(".", 1)[-1] if found else kind
    return "None" if name == "NoneType" else f"a{'n' if name[:1] in 'aeiou' else ''} {name}"


def invalid_value_message(message: str) -> str | None:
    """``invalid value 'lyapunv' for LyapunovInit's 'scheme': expected one of 'lyapunov', ... or None`` for
    jsonargparse's (nested) union error about a value of the wrong type or not among the allowed ones,
    or None for other errors. Only the first class path's problem counts (jsonargparse then tries the
    base class, which accepts no argument at all)."""
    start = message.find("Problem with given class_path")
    owner, block = "", message
    if start >= 0:
        found = re.match(r"Problem with given class_path '([\w.]+)':", message[start:])
        if found is None:
            return None
        owner = found.group(1).rsplit(".", 1)[-1] + "'s "
        end = message.find("\n    - ", start)  # the next alternative of the outer union
        block = message[start:end if end >= 0 else None]
    nested = _ONE_LINE.search(block)  # a nested parser (the class's own) has said it in one line already
    if nested is not None:
        return f"invalid value {nested.group(1)} for {owner}{nested.group(2)}"
    keys = _KEY.findall(block)
    expected = _EXPECTED.findall(block)
    if not keys or not expected:
        return None
    value = next((got for _, got in expected if got), None)
    if value is None:
        given = _GIVEN.search(block)
        if given is None:
            return None
        value = given.group(1)
    kinds = list(dict.fromkeys(_allowed(kind) for kind, _ in expected))
    return f"invalid value {value.strip()!r} for {owner}{keys[-1]!r}: expected {' or '.join(kinds)}"


class LyapunovArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose error for a misspelt constructor argument or an invalid value is one line."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        return super().error(unknown_argument_message(message) or invalid_value_message(message) or message, ex)


class LyapunovCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule as ``model`` / ``data``.

    Constructor ``ValueError`` s (invalid config values) become parser errors: the message on
    stderr and ``SystemExit(2)``, as for a value of the wrong type.

    Example::

        cli = LyapunovCLI(args=["-c", "configs/digits.yaml"], run=False)   # instantiate only
        cli.trainer.callbacks                                               # [..., LyapunovInit, ...]
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", _parser_kwargs() if run else {})
        kwargs.setdefault("parser_class", LyapunovArgumentParser)
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,
        )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # listed for --help only: main() dispatches them before LightningCLI parses anything
        for name, description in EXTRA_COMMANDS.items():
            parser._subcommands_action.add_subcommand(
                name, LyapunovArgumentParser(description=description), help=description
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Sequence[str] | None) -> None:
        # main() passes sys.argv[1:] on: no "args and command line arguments" warning
        self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            self._parser(self.subcommand).error(_config_error(error))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # before the Trainer, whose own check of duplicate stateful callbacks is less helpful
        _lyapunov_init(_callbacks(self._get(self.config_init, "trainer", default={})))
        return super().instantiate_trainer(**kwargs)


class PlanCLI(LyapunovCLI):
    """The parser of ``fit`` (no subcommand) plus the plan's overrides; instantiates model and
    callbacks only. :attr:`plan` is the :class:`~lightning_lyapunov.InitPlan` of the config's
    callback's :class:`~lightning_lyapunov.InitSpec` (the one ``fit`` applies), with the overrides;
    :attr:`spec` that spec. ``print(cli)`` shows the plan and, when ``fit`` would sample or
    calibrate on the first training batch, says so (this command reads no data); :attr:`look_ahead`:
    what the callback's look-ahead will do (empty without one).

    Example::

        print(PlanCLI(args=["-c", "configs/polynomial.yaml", "--scheme", "he"]).plan)
    """

    def __init__(self, args: Sequence[str] | None = None) -> None:
        super().__init__(
            args=args,
            run=False,
            save_config_callback=None,
            parser_kwargs={"prog": f"{PROG} plan", "description": EXTRA_COMMANDS["plan"], "usage": USAGE},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        group = parser.add_argument_group("plan overrides (default: the LyapunovInit callback's settings)")
        group.add_argument(
            "--scheme",
            type=Optional[Literal[SCHEMES]],
            default=None,
            help="initialization scheme",
        )
        group.add_argument(
            "--distribution", type=Optional[Literal[DISTRIBUTIONS]], default=None,
            help="weight distribution of the lyapunov and fractional schemes",
        )
        group.add_argument("--moment", type=Optional[float], default=None, help="moment s in (0, 2] (fractional)")
        group.add_argument(
            "--negative_slope", type=Optional[float], default=None,
            help="slope in [0, 1] for every layer instead of the detected ones",
        )
        parser.add_argument("--details", type=bool, default=False,
                            help="every column of the plan table (d_in, d_out, type, draw, what each slope was found "
                                 "from), not the 120-column default")

    def instantiate_classes(self) -> None:
        try:
            instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes  # < 4.49
            self.config_init = instantiate(self.config)
            self.model = self.config_init.get("model")
            callback = _lyapunov_init(_callbacks(self.config_init.get("trainer", {})))
            self.spec = callback.spec if callback is not None else LyapunovInit().spec
            configured = callback.look_ahead.configured() if callback is not None else ""
            self.look_ahead = textwrap.fill(configured, width=120)
            overrides = {k: self.config[k] for k in _OVERRIDES if self.config.get(k) is not None}
            if overrides:
                self.spec = self.spec.replace(**overrides)
            with warnings.catch_warnings(record=True) as caught:  # printed once, in the plan
                warnings.simplefilter("always")
                self.plan = plan_init(self.model, self.spec)
        except (ValueError, TypeError) as error:
            self.parser.error(_config_error(error))
        for warning in caught:  # anything the plan does not list is passed on
            if str(warning.message) not in self.plan.warnings:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _callbacks(trainer_config: Mapping[str, Any]) -> list[Any]:
    """``trainer.callbacks`` of an instantiated config as a list."""
    callbacks = trainer_config.get("callbacks") or []
    return callbacks if isinstance(callbacks, list) else [callbacks]


def _config_error(error: BaseException) -> str:
    """The message of the innermost ValueError or TypeError in ``error``'s chain: jsonargparse wraps a
    constructor's error in "Does not validate against any of the Union subtypes ..."."""
    innermost = error
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, (ValueError, TypeError)):
            innermost = cause
        cause = cause.__cause__ or cause.__context__
    return f"invalid configuration: {innermost}"


def _lyapunov_init(callbacks: Sequence[Any]) -> LyapunovInit | None:
    """The :class:`~lightning_lyapunov.LyapunovInit` in ``callbacks``, or None; ValueError when there
    are several (each would re-initialize the model, and the last one would win silently)."""
    check_single(callbacks, LyapunovInit, lambda cb: f"scheme={cb.spec.scheme!r}", hint=_CLI_HINT)
    return next((c for c in callbacks if isinstance(c, LyapunovInit)), None)


def fit_note(spec: InitSpec) -> str | None:
    """What ``fit`` does beyond this plan, on the first training batch (which ``plan`` does not read)."""
    steps = []
    if spec.sampling is not None:
        steps.append(f"selects among {spec.candidates or 'ceil(2 sqrt(layers))'} draws (sampled={spec.sampling!r})")
    if spec.calibration_method is not None:
        optional = " (calibrate='auto': skipped, with a warning, if the batch cannot calibrate the draw)" \
            if spec.calibration_optional else ""
        stream = ""
        if spec.calibration_method == "layers":
            stream = (", residual streams' rms growth at most " + f"{spec.stream_growth:.3g}x" if spec.stream_growth
                      else ", residual branches at rms 1 (stream_growth=None)")
        steps.append(f"calibrates ({spec.calibration_method!r}, output root-mean-square {spec.calibrate_target:g}"
                     f"{stream}){optional}")
    if not steps:
        return None
    return textwrap.fill("fit observes the first training batch, then " + " and ".join(steps)
                         + "; this plan reads no data: it shows theory's draw", width=120)
