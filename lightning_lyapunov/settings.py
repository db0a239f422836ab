"""The initialization settings, declared once: :class:`InitSpec`.

``plan_init``, ``apply_init``, ``sample_lyapunov_``, the :class:`~lightning_lyapunov.LyapunovInit`
callback, ``lightning-lyapunov plan`` and the benchmarks all read one frozen ``InitSpec``, validated
once, here, with every rule that involves several settings (a moment only for ``fractional``,
``conv='full'`` refused for Stiefel, sampling needs a random scheme, a calibration target needs a
calibration, ...). What the rest of the package reads are its resolved values:

* :attr:`InitSpec.conv_draw`: ``"delta"`` for Stiefel, else ``"full"``, unless ``conv`` says;
* :attr:`InitSpec.sampling`: ``None``, ``"network"`` (``sampled=True``) or ``"layerwise"``;
* :attr:`InitSpec.calibration_method`: ``None``, ``"layers"`` or ``"output"``; ``calibrate="auto"`` is
  ``"layers"`` for the Lyapunov scheme and ``None`` for the published baselines, and an ``"auto"``
  calibration is optional (:attr:`InitSpec.calibration_optional`): without a batch, or when the
  batch cannot calibrate the draw, theory's draw is kept (with a warning in the second case).

Example::

    >>> spec = InitSpec(scheme="lyapunov", calibrate="auto")
    >>> spec.calibration_method, spec.calibration_optional, spec.conv_draw
    ('layers', True, 'full')
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from lightning_lyapunov import init as _init
from lightning_lyapunov._checks import check_choice, check_float, check_int, check_slope, invalid

__all__ = ["CALIBRATIONS", "CONV_DRAWS", "DEFAULT_TARGET", "SAMPLINGS", "STREAM_GROWTH", "InitSpec", "Patterns",
           "SlopeOverride", "check_stream_growth"]

Patterns = Union[str, Sequence[str], None]
SlopeOverride = Union[float, Mapping[str, float], None]
CONV_DRAWS: tuple[str, ...] = ("full", "delta")
CALIBRATIONS: tuple[str, ...] = ("layers", "output")
SAMPLINGS: tuple[str, ...] = ("network", "layerwise")
#: The output's root-mean-square after a calibration (a smaller ``calibrate_target`` trains more deep
#: narrow nets with Adam; see :mod:`lightning_lyapunov.calibration`).
DEFAULT_TARGET = 1.0
#: The default growth ``G`` of a residual stream's root-mean-square over all its residual blocks
#: under ``calibrate="layers"`` (see :mod:`lightning_lyapunov.residual`).
STREAM_GROWTH = math.sqrt(2.0)


def check_stream_growth(value: float | None) -> float | None:
    """``stream_growth`` as a float ``> 1``, or None; ``ValueError``/``TypeError`` naming it otherwise."""
    if value is None:
        return None
    return check_float("stream_growth", value, minimum=1.0, low_open=True,
                       allowed="a number > 1 (the residual stream's rms growth over all blocks) or None")


@dataclass(frozen=True)
class InitSpec:
    """How to initialize a model: the scheme, which layers, how convolutions are drawn, sampling and
    calibration. Validated on construction (``ValueError``/``TypeError`` naming the setting and the fix).

    Args:
        scheme: ``"lyapunov"`` (exponent 0), ``"fractional"`` (``moment``), ``"stiefel"``, ``"he"``,
            ``"glorot"``, ``"orthogonal"`` or ``"zero"`` (ZerO).
        distribution: ``"orthogonal"`` or ``"gaussian"`` weights (``lyapunov`` and ``fractional``).
        moment: the moment order ``s`` in (0, 2] of ``scheme="fractional"`` (``s = 2`` is He).
        negative_slope: ``None`` (the activation after each layer is detected), a slope in [0, 1]
            for every layer, or ``{regex: slope}`` (first ``re.search`` match on the layer's name).
        include: regex or list of regexes: only these layers (qualified module names).
        exclude: regex or list of regexes: leave these layers alone.
        conv: ``"full"`` kernel or ``"delta"`` (one matrix at the centre tap); ``None``: the
            scheme's default (``"delta"`` for Stiefel, ``"full"`` otherwise).
        sampled: ``False``; ``True``/``"network"``: keep the best of ``candidates`` whole draws on
            a probe batch; ``"layerwise"``: choose each layer's draw in turn.
        candidates: how many draws sampling compares (``None``: ``ceil(2 sqrt(layers))``).
        calibrate: ``None``; ``"layers"``: each layer's output to root-mean-square 1 in forward
            order, the last to ``calibrate_target``; ``"output"``: one factor on every layer so the
            output's root-mean-square is ``calibrate_target``; ``"auto"``: ``"layers"`` for
            ``scheme="lyapunov"``, ``None`` otherwise, and optional (module docstring).
        calibrate_target: the output's root-mean-square after a calibration. A small one (e.g. ``0.001``) trains
            more deep narrow nets (width 2-3) with Adam but slowed two standard classifiers (an MNIST MLP and
            a CIFAR-10 CNN): with Adam for a few epochs, with plain SGD the CNN for 20 and more (the README's
            targets table).
        stream_growth: with ``calibrate="layers"``, the growth ``G > 1`` of a residual stream's
            root-mean-square over all its recognized residual blocks ``x + f(x)``: each branch is
            set to ``sqrt(G^(2/B) - 1)`` times the stream's rms (``B`` blocks); ``None``: every
            layer to rms 1, residual or not (the stream then grows like ``sqrt(1 + B)``).

    Example::

        >>> InitSpec(scheme="fractional", moment=0.8, distribution="gaussian").moment
        0.8
    """

    scheme: Literal["lyapunov", "fractional", "stiefel", "he", "glorot", "orthogonal", "zero"] = "lyapunov"
    distribution: Literal["gaussian", "orthogonal"] = "orthogonal"
    moment: float | None = None
    negative_slope: float | dict[str, float] | None = None
    include: str | list[str] | None = None
    exclude: str | list[str] | None = None
    conv: Literal["full", "delta"] | None = None
    sampled: bool | Literal["network", "layerwise"] = False
    candidates: int | None = None
    calibrate: Literal["auto", "layers", "output"] | None = None
    calibrate_target: float = DEFAULT_TARGET
    stream_growth: float | None = STREAM_GROWTH
    _slopes: Any = field(init=False, repr=False, compare=False)
    _include: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _init.validate_scheme(self.scheme, self.distribution, self.moment)
        if self.moment is not None:
            object.__setattr__(self, "moment", float(self.moment))
        object.__setattr__(self, "_slopes", _slope_overrides(self.negative_slope))
        object.__setattr__(self, "_include", _patterns("include", self.include))
        object.__setattr__(self, "_exclude", _patterns("exclude", self.exclude))
        if self.conv is not None:
            check_choice("conv", self.conv, CONV_DRAWS)
        if self.scheme == "stiefel" and self.conv == "full":
            raise ValueError(
                "conv='full' with scheme='stiefel': the flattened conv matrix's row sums sqrt(C_in prod(kernel) / C_out) "
                "amplify the mean at every layer (+19 log-gain over 20 3x3 ReLU layers); Stiefel uses the delta "
                "construction for convolutions: pass conv=None or conv='delta'"
            )
        check_choice("sampled", self.sampled, (False, True, *SAMPLINGS))
        if self.sampled and self.scheme == "zero":
            raise ValueError("sampled needs a random scheme; 'zero' is deterministic: use sampled=False")
        check_int("candidates", self.candidates, minimum=1, allow_none=True,
                  allowed="an integer >= 1 or None (None: ceil(2 sqrt(layers)))")
        if self.candidates is not None and not self.sampled:
            raise ValueError(f"candidates={self.candidates} is only used with sampled=True or 'layerwise': pass "
                             "sampled= too, or drop candidates=")
        if self.calibrate is not None:
            check_choice("calibrate", self.calibrate, ("auto", *CALIBRATIONS, None))
        target = check_float("calibrate_target", self.calibrate_target, minimum=0.0, low_open=True,
                             allowed="a positive finite number (the output's root-mean-square after calibration)")
        object.__setattr__(self, "calibrate_target", target)
        object.__setattr__(self, "stream_growth", check_stream_growth(self.stream_growth))
        if self.calibration_method != "layers" and self.stream_growth != STREAM_GROWTH:
            raise ValueError(f"stream_growth={self.stream_growth!r} is only used by calibrate='layers' (calibration "
                             f"method here: {self.calibration_method!r}): pass calibrate='layers', or drop stream_growth=")
        if self.calibration_method is None and target != DEFAULT_TARGET:
            why = (f"calibrate='auto' calibrates nothing for scheme={self.scheme!r} (only 'lyapunov' is calibrated "
                   "by default)" if self.calibrate == "auto" else "calibrate=None calibrates nothing")
            raise ValueError(f"calibrate_target={target!r} is only used by a calibration, and {why}: pass "
                             "calibrate='layers' or 'output', or drop calibrate_target=")

    # ------------------------------------------------------------------ resolved values

    @property
    def conv_draw(self) -> str:
        """How convolutions are drawn: ``conv``, or the scheme's default (``"delta"`` for Stiefel)."""
        return self.conv or ("delta" if self.scheme == "stiefel" else "full")

    @property
    def sampling(self) -> str | None:
        """``None``, ``"network"`` or ``"layerwise"``."""
        return "network" if self.sampled is True else (self.sampled or None)

    @property
    def calibration_method(self) -> str | None:
        """The calibration applied when a batch is given: ``None``, ``"layers"`` or ``"output"``."""
        if self.calibrate == "auto":
            return "layers" if self.scheme == "lyapunov" else None
        return self.calibrate

    @property
    def calibration_optional(self) -> bool:
        """An ``"auto"`` calibration: skipped without a batch, and when the batch cannot calibrate."""
        return self.calibrate == "auto"

    def slope_for(self, name: str) -> float | None:
        """The ``negative_slope`` override of layer ``name``, or None (detect it)."""
        if self._slopes is None or isinstance(self._slopes, float):
            return self._slopes
        return next((slope for pattern, slope in self._slopes if pattern.search(name)), None)

    @property
    def slope_patterns(self) -> tuple[re.Pattern[str], ...]:
        """The regexes of a ``negative_slope`` mapping (empty otherwise)."""
        return () if self._slopes is None or isinstance(self._slopes, float) else tuple(p for p, _ in self._slopes)

    @property
    def include_patterns(self) -> tuple[re.Pattern[str], ...]:
        return self._include

    @property
    def exclude_patterns(self) -> tuple[re.Pattern[str], ...]:
        return self._exclude

    def replace(self, **changes: Any) -> InitSpec:
        """A copy with ``changes`` (validated again).

        Example::

            >>> InitSpec().replace(scheme="he").scheme
            'he'
        """
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The settings as given (the constructor's keyword arguments), e.g. for a config or a log."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def __str__(self) -> str:
        """The settings that differ from the defaults, ``scheme`` always: ``scheme='he', calibrate='auto'``."""
        defaults = InitSpec()
        changed = {k: v for k, v in self.settings().items() if k == "scheme" or v != getattr(defaults, k)}
        return ", ".join(f"{k}={v!r}" for k, v in changed.items())


def _patterns(argument: str, value: Patterns) -> tuple[re.Pattern[str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        invalid(argument, value, "a regular expression or a list of them (re.search on qualified module names)")
    items = [value] if isinstance(value, str) else value
    try:
        return tuple(re.compile(item) for item in items)
    except (TypeError, re.error) as error:
        raise ValueError(
            f"{argument}={value!r} is not a regular expression or a list of them ({error}); "
            f"pass e.g. {argument}=r'^encoder\\.' (matched with re.search on qualified module names)"
        ) from None


def _slope_overrides(negative_slope: SlopeOverride) -> float | tuple[tuple[re.Pattern[str], float], ...] | None:
    if negative_slope is None:
        return None
    if isinstance(negative_slope, Mapping):
        return tuple(
            (_patterns("negative_slope key", pattern)[0], check_slope(f"negative_slope[{pattern!r}]", slope))
            for pattern, slope in negative_slope.items()
        )
    return check_slope("negative_slope", negative_slope)
