"""Model surgery: plan and apply a per-layer initialization scheme on any ``nn.Module``.

``plan_init`` finds the weight layers (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d), the slope of
the activation after each (:mod:`lightning_lyapunov.activations`), and resolves the scheme per layer
(:func:`lightning_lyapunov.init.resolve_init`) without touching a weight. ``apply_init`` validates
everything the same way, draws every new weight, and only then writes them: on any error, no weight
has changed. ``swap_activations`` replaces activation modules (e.g. ReLU by LeakyReLU(0.1)).

Fans (docs/theory.md, section 3): a layer maps ``d_in`` inputs to ``d_out`` outputs per location.

* Linear: ``d_in = in_features``, ``d_out = out_features``.
* ConvNd: ``d_in = C_in / groups * prod(kernel)``, ``d_out = C_out / groups``; each group's slice of
  the weight (along dim 0) is drawn separately.
* ConvTransposeNd: the weight ``(C_in, C_out / groups, *kernel)`` is drawn per group in conv layout
  (``weight.transpose(0, 1)``); each output location receives about ``prod(kernel) / prod(stride)``
  taps per input channel, so ``d_in = max(1, round(C_in / groups * prod(kernel) / prod(stride)))``,
  ``d_out = C_out / groups``. The orthogonal draw's scale and prediction use the drawn matrix's
  ``C_in / groups * prod(kernel)`` columns (``drawn_in``, :func:`lightning_lyapunov.theory.lyapunov_exponent`):
  with stride 2 in 2-d, ``d_in`` alone under-predicts the gain by ``log 2`` per layer.

Delta convolutions (``conv="delta"``; always for ``scheme="stiefel"``): every tap of the kernel is 0
except the centre one, which holds the drawn ``(C_out/groups, C_in/groups)`` matrix (the
delta-orthogonal init of Xiao et al. 2018), so each output location is that matrix applied to one
input location: ``d_in = C_in / groups``, ``d_out = C_out / groups``. A Stiefel (mean-calibrated)
centre matrix then preserves the mean at every location exactly, where the flattened
``(C_out, C_in * prod(kernel))`` matrix has row sums ``sqrt(C_in prod(kernel) / C_out)`` and
amplifies the mean 3x per square 3x3 layer. A transposed conv with stride ``s`` feeds each output
location from one tap per residue class (tap index mod ``s``): it gets one independently drawn
centre matrix per class (the tap nearest the centre), so every output location again sees exactly
one matrix.

Left alone, and listed in ``plan.skipped``: embeddings, norm layers, attention (everything inside
``nn.MultiheadAttention``, its out-projection included), any other parametrized module, layers not
selected by ``include``/``exclude``; with a warning: frozen weights (``requires_grad=False``), lazy
(uninitialized) and meta parameters, parametrized weights (weight_norm, spectral_norm). Every scheme assumes zero biases: the bias of every planned
layer is set to 0 (a frozen bias is left alone, with a warning).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import _checks
from . import init as _init
from ._checks import check_bool, check_int, check_module, check_slope, check_tensor, invalid
from .activations import WEIGHT_LAYERS, SlopeInfo
from ._forward import Forward
from .observe import find_slopes

__all__ = ["InitPlan", "LayerPlan", "plan_init", "apply_init", "swap_activations"]

Patterns = Union[str, Sequence[str], None]
CONV_DRAWS = ("full", "delta")
SlopeOverride = Union[float, Mapping[str, float], None]
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class LayerPlan:
    """What ``apply_init`` does to one weight layer (``module`` is the layer itself).

    ``shared_with``: the other layers whose weight is this very Parameter (tied weights): it is
    drawn once, here, and their biases are zeroed too, except those in ``kept_biases`` (a bias also held
    by a module that the plan leaves alone is left alone). ``taps``: for a delta conv, the kernel
    positions that hold a drawn matrix (every other tap is 0); None for a full draw.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    d_in: int
    d_out: int
    groups: int
    negative_slope: float
    slope_source: str
    init: _init.LayerInit
    zero_bias: bool
    transposed: bool = False
    shared_with: tuple[str, ...] = ()
    taps: tuple[tuple[int, ...], ...] | None = None
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    sharers: tuple[nn.Module, ...] = field(default=(), repr=False, compare=False)
    slope_from: str = "fx"
    calls: int | None = None
    calibration: float | None = None
    measured_log_gain: float | None = None
    kept_biases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (no module) for logging."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("module", "sharers", "init")}
        out["shape"] = list(self.shape)
        out["shared_with"] = list(self.shared_with)
        out["kept_biases"] = list(self.kept_biases)
        out["taps"] = None if self.taps is None else [list(tap) for tap in self.taps]
        out["init"] = asdict(self.init)
        return out

    def draw(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A new weight for this layer, drawn on the CPU in float32 (whatever the layer's dtype, so
        the same generator gives the same weights, up to rounding, in every precision and on every
        device); nothing is written.

        Each group is drawn separately in conv layout; a transposed conv's group is drawn as
        ``(C_out/groups, C_in/groups, *kernel)`` and stored transposed. A delta conv draws one
        ``(C_out/groups, C_in/groups)`` matrix per tap in ``taps`` and zeros the others.
        """
        check_generator(generator)
        dtype = torch.float32
        with torch.no_grad():
            out = torch.empty(self.shape, dtype=dtype)
            rows = self.shape[0] // self.groups
            for g in range(self.groups):
                block = out[g * rows:(g + 1) * rows]
                piece = torch.empty(block.transpose(0, 1).shape, dtype=dtype) if self.transposed else block
                if self.taps is None:
                    _init.init_weight_(piece, self.init, generator=generator)  # the scale already holds the fans
                else:
                    piece.zero_()
                    for tap in self.taps:
                        _init.init_weight_(piece[(slice(None), slice(None), *tap)], self.init, generator=generator)
                if self.transposed:
                    block.copy_(piece.transpose(0, 1))
        return out

    def targets(self) -> list[torch.Tensor]:
        """The tensors :meth:`write` writes over: the weight and every bias it zeroes."""
        holders = zip((self.name, *self.shared_with), (self.module, *self.sharers))
        biases = [m.bias for n, m in holders if _zeroable_bias(m) and n not in self.kept_biases] if self.zero_bias else []
        return [self.module.weight, *biases]

    def write(self, weight: torch.Tensor) -> None:
        """Copy a drawn weight into the layer (to its device and dtype) and zero the biases.

        Not all-or-nothing on its own: call it inside :meth:`InitPlan.restoring` (as
        :meth:`InitPlan.write` does) so that an error restores what was written before it.
        """
        check_tensor("weight", weight, min_dim=1)
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"weight of shape {tuple(weight.shape)} for layer {self.name!r} of shape {self.shape}: "
                             "pass what LayerPlan.draw returns")
        weight_tensor, *biases = self.targets()
        with torch.no_grad():
            weight_tensor.copy_(weight)
            for bias in biases:
                bias.zero_()


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class InitPlan:
    """The per-layer plan: ``layers`` in forward order, ``skipped`` (name, reason), ``warnings``.

    ``predicted_drift`` = sum of the per-layer exponents (the expected change of log r, r = ||x|| /
    sqrt(d), from input to output; after a calibration, the sum of the measured log-gains,
    ``layer_log_gains``) and ``predicted_spread`` = sqrt(sum of per-layer variances) (the standard
    deviation of theory's draw by the CLT); None when the theory does not apply to some layer (ZerO).
    """

    scheme: str
    distribution: str
    moment: float | None
    layers: list[LayerPlan]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    conv: str = "full"
    calibration: str | None = None

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def layer_log_gains(self) -> list[float | None]:
        """Per layer, the change of log r the plan expects at step 0: theory's exponent, or after a
        calibration the log-gain measured on the calibration batch (where it is finite)."""
        return [layer.measured_log_gain if self.calibration and _finite(layer.measured_log_gain)
                else layer.init.exponent for layer in self.layers]

    @property
    def predicted_drift(self) -> float | None:
        gains = self.layer_log_gains
        return None if any(g is None for g in gains) else float(sum(gains))

    @property
    def predicted_spread(self) -> float | None:
        variances = [layer.init.variance for layer in self.layers]
        return None if any(v is None for v in variances) else math.sqrt(sum(variances))

    def draw(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """New weights for every planned layer, drawn in plan order from one CPU generator (or
        torch's default CPU generator); nothing is written. See :meth:`LayerPlan.draw`."""
        check_generator(generator)
        return [layer.draw(generator) for layer in self.layers]

    def write(self, weights: Sequence[torch.Tensor]) -> None:
        """Write drawn weights into every planned layer and zero their biases, all or nothing: on
        any exception (``KeyboardInterrupt`` included) every weight and bias is restored."""
        if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
            invalid("weights", weights, "a list of tensors, one per planned layer (what InitPlan.draw returns)")
        if len(weights) != len(self.layers):
            raise ValueError(f"weights has {len(weights)} tensors for {len(self.layers)} planned layers")
        with self.restoring():
            for layer, weight in zip(self.layers, weights):
                layer.write(weight)

    @contextlib.contextmanager
    def restoring(self, generator: torch.Generator | None = None) -> Iterator[None]:
        """Context: on any exception inside it (``KeyboardInterrupt`` included), put back every tensor
        the plan writes (weights and zeroed biases, copied on entry) and the state of ``generator``
        (torch's default CPU generator when None), then re-raise. Nested uses copy only once.

        Example::

            with plan.restoring(generator):
                plan.write(plan.draw(generator))
                check(model)   # raising here leaves the model and the generator as they were
        """
        check_generator(generator)
        if getattr(self, "_restoring", False):
            yield
            return
        rng = generator if generator is not None else torch.default_generator
        rng_state = rng.get_state()
        targets = list({id(t): t for layer in self.layers for t in layer.targets()}.values())
        with torch.no_grad():
            saved = [t.detach().clone() for t in targets]
        self._restoring = True
        try:
            yield
        except BaseException:
            _restore(targets, saved)
            rng.set_state(rng_state)
            raise
        finally:
            self._restoring = False

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values for logging (JSON/YAML serializable)."""
        return {
            "scheme": self.scheme,
            "distribution": self.distribution,
            "moment": self.moment,
            "conv": self.conv,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [list(item) for item in self.skipped],
            "warnings": list(self.warnings),
            "predicted_drift": self.predicted_drift,
            "predicted_spread": self.predicted_spread,
            "calibration": self.calibration,
        }

    def __str__(self) -> str:
        return self.describe()

    def describe(self, warnings: bool = True, fold: int = 3) -> str:
        """The plan as a table; ``print(plan)`` shows ``describe()``.

        The header names what is drawn (``distribution`` is the weights' law of every layer,
        e.g. ``'gaussian'`` for He whatever ``distribution=`` was given; ``moment`` only for
        ``fractional``). ``fold``: runs of at least this many consecutive layers identical but for
        their names are shown as one row (``3-38  net.6 ... net.76 (x36)  Linear  2x2 ...``; 0
        shows every layer); after a calibration a folded row shows the range of the factors and
        measured log-gains (``-0.9977 .. 1.3048``). ``warnings=False`` leaves out the plan's warnings (already emitted as
        Python warnings by :func:`plan_init`).
        """
        check_bool("warnings", warnings)
        check_int("fold", fold, minimum=0, allowed="an integer >= 0 (0 shows every layer)")
        header = ("#", "layer", "type", "shape", "d_in", "d_out", "slope", "slope from", "calls", "draw", "scale",
                  "exponent", "variance", "shared with")
        body = [_row(i, layer) for i, layer in enumerate(self.layers)]
        if all(row[-1] == "-" for row in body):  # no tied weights: no column for them
            header, body = header[:-1], [row[:-1] for row in body]
        if all(row[8] in ("-", "1") for row in body):  # no layer called twice: no column for the calls
            header, body = _drop(header, 8), [_drop(row, 8) for row in body]
        if self.calibration:
            header += ("calibration", "log-gain")
            body = [row + (_fmt(layer.calibration), _fmt(layer.measured_log_gain))
                    for row, layer in zip(body, self.layers)]
        rows = [header] + _fold_rows(body, fold, ranged=2 if self.calibration else 0)
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        draws = sorted({layer.init.distribution for layer in self.layers})
        moment = f", moment={self.moment!r}" if self.scheme == "fractional" else ""
        lines = [
            f"InitPlan: scheme={self.scheme!r}, distribution={'/'.join(draws)!r}{moment}"
            + (f", conv={self.conv!r}" if any(layer.taps is not None for layer in self.layers) else "") + "; "
            f"{len(self.layers)} layers, biases of planned layers set to 0"
        ]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(2, "  ".join("-" * w for w in widths))
        exponents = [layer.init.exponent for layer in self.layers]
        spread = self.predicted_spread
        theory = ("n/a (theory does not apply to every layer)" if None in exponents or spread is None
                  else f"{sum(exponents):+.3f} +- {spread:.3f} (sum of exponents +- sqrt(sum of variances))")
        if self.calibration:
            gains = [layer.measured_log_gain for layer in self.layers]
            measured = sum(gains) if all(_finite(g) for g in gains) else math.nan
            lines.append(f"calibrated ({self.calibration!r}) on the example input: weights times the "
                         f"'calibration' factor; measured sum of layer log-gains {measured:+.3f} "
                         "(the diagnostics' prediction from here on)")
        lines.append(("before calibration, theory's" if self.calibration else "predicted")
                     + f" log-norm drift input -> output: {theory}")
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.skipped:
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            lines.append(f"skipped {shown}: {reason}")
        if warnings:
            lines += [f"warning: {message}" for message in self.warnings]
        return "\n".join(lines)


def _drop(row: tuple[str, ...], column: int) -> tuple[str, ...]:
    return row[:column] + row[column + 1:]


def _fold_rows(rows: list[tuple[str, ...]], fold: int, ranged: int = 0) -> list[tuple[str, ...]]:
    """Rows (index, name, *rest): runs of ``>= fold`` consecutive rows with equal ``rest`` become one.
    The last ``ranged`` columns (measured values) may differ within a run: a folded row shows their
    range ``min .. max``."""
    cut = len(rows[0]) - ranged if rows else 0
    out: list[tuple[str, ...]] = []
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and rows[end][2:cut] == rows[start][2:cut]:
            end += 1
        if fold and end - start >= fold:
            first, last = rows[start], rows[end - 1]
            spans = tuple(_span([row[c] for row in rows[start:end]]) for c in range(cut, len(first)))
            out.append((f"{first[0]}-{last[0]}", f"{first[1]} ... {last[1]} (x{end - start})", *first[2:cut], *spans))
        else:
            out += rows[start:end]
        start = end
    return out


def _span(cells: list[str]) -> str:
    values = sorted(set(cells), key=lambda cell: float(cell) if cell not in ("-", "nan") else math.inf)
    return values[0] if len(values) == 1 else f"{values[0]} .. {values[-1]}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{0.0 if abs(value) < 5e-5 else value:.4f}"


def _row(index: int, layer: LayerPlan) -> tuple[str, ...]:
    groups = f" g={layer.groups}" if layer.groups > 1 else ""
    found = layer.slope_source if layer.slope_from in layer.slope_source else f"{layer.slope_from}: {layer.slope_source}"
    return (str(index), layer.name, layer.kind + groups, "x".join(map(str, layer.shape)), str(layer.d_in),
            str(layer.d_out), f"{layer.negative_slope:g}", found, "-" if layer.calls is None else str(layer.calls),
            layer.init.distribution + (" delta" if layer.taps is not None else ""),
            _fmt(layer.init.scale), _fmt(layer.init.exponent), _fmt(layer.init.variance),
            ", ".join(layer.shared_with) or "-")


def _restore(targets: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Copy saved values back; a tensor that cannot be written (the cause of the error) was not."""
    with torch.no_grad():
        for tensor, value in zip(targets, saved):
            try:
                tensor.copy_(value)
            except Exception:  # noqa: BLE001 - unwritable, hence unchanged; the original error propagates
                pass


def _zeroable_bias(module: nn.Module) -> bool:
    bias = getattr(module, "bias", None)
    return isinstance(bias, torch.Tensor) and bias.requires_grad


def _patterns(argument: str, value: Patterns) -> list[re.Pattern[str]]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if isinstance(value, Mapping):
        invalid(argument, value, "a regular expression or a list of them (re.search on qualified module names)")
    try:
        return [re.compile(item) for item in items]
    except (TypeError, re.error) as error:
        raise ValueError(
            f"{argument}={value!r} is not a regular expression or a list of them ({error}); "
            f"pass e.g. {argument}=r'^encoder\\.' (matched with re.search on qualified module names)"
        ) from None


def _slope_overrides(negative_slope: SlopeOverride) -> float | list[tuple[re.Pattern[str], float]] | None:
    if negative_slope is None:
        return None
    if isinstance(negative_slope, Mapping):
        pairs = []
        for pattern, slope in negative_slope.items():
            compiled = _patterns("negative_slope key", pattern)[0]
            pairs.append((compiled, check_slope(f"negative_slope[{pattern!r}]", slope)))
        return pairs
    return check_slope("negative_slope", negative_slope)


def _override(name: str, overrides: float | list[tuple[re.Pattern[str], float]] | None) -> float | None:
    if overrides is None or isinstance(overrides, float):
        return overrides
    return next((slope for pattern, slope in overrides if pattern.search(name)), None)


def _unusable(module: nn.Module) -> str | None:
    """Why a weight layer's parameters cannot be initialized now (lazy, meta, frozen), or None.

    A weight that is not a registered Parameter (parametrizations, legacy ``weight_norm``'s
    ``weight_g``/``weight_v`` and ``spectral_norm``'s ``weight_orig``) is refused before it is read:
    reading a parametrized weight runs the parametrization (a spectral norm's power iteration).
    """
    if parametrize.is_parametrized(module, "weight") or not isinstance(module._parameters.get("weight"), nn.Parameter):
        return (
            "parametrized weight (weight_norm, spectral_norm, ...): the stored tensor is not the weight, "
            "an init written into it would be lost at the next forward"
        )
    weight = module.weight
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy module with uninitialized parameters: run one forward pass before initializing"
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return "uninitialized (lazy) parameter: run one forward pass before initializing"
    if weight.is_meta:
        return "meta parameter: materialize it first (model.to_empty(device=...))"
    if not weight.requires_grad:
        return "frozen weight (requires_grad=False): left alone"
    return None


def _fans(module: nn.Module, delta: bool = False) -> tuple[int, int, int]:
    """(d_in, d_out, groups) per group, as in the module docstring."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, 1
    groups, kernel = module.groups, math.prod(module.kernel_size)
    c_in, c_out = module.in_channels // groups, module.out_channels // groups
    if delta:
        return c_in, c_out, groups
    if isinstance(module, _TRANSPOSED):
        return max(1, round(c_in * kernel / math.prod(module.stride))), c_out, groups
    return c_in * kernel, c_out, groups


def _delta_taps(module: nn.Module) -> tuple[tuple[int, ...], ...]:
    """The taps of a delta conv: the centre ``k // 2`` per dimension; for a transposed conv, per
    dimension one tap per residue class mod the stride (the one nearest ``k // 2``), all combinations."""
    kernel = module.kernel_size
    if not isinstance(module, _TRANSPOSED):
        return (tuple(k // 2 for k in kernel),)
    per_dim = [
        [min((t for t in range(k) if t % s == r), key=lambda t, k=k: (abs(t - k // 2), t)) for r in range(min(s, k))]
        for k, s in zip(kernel, module.stride)
    ]
    return tuple(itertools.product(*per_dim))


def _drawn_in(module: nn.Module, delta: bool = False) -> int | None:
    """Columns of a transposed conv's drawn matrix (``C_in / groups * prod(kernel)``), else None."""
    if isinstance(module, _TRANSPOSED) and not delta:
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    return None


def _discover(
    model: nn.Module, include: list[re.Pattern[str]], exclude: list[re.Pattern[str]]
) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Eligible weight layers (registration order), skipped (name, reason), and warnings.

    Raises ValueError for an ``include``/``exclude`` pattern that matches no weight layer.
    """
    eligible, skipped, warnings_, layers = [], [], [], []
    attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, module in model.named_modules():
        below_attention = any(a == "" or name.startswith(a + ".") for a in attention)
        if isinstance(module, WEIGHT_LAYERS) and not below_attention:
            layers.append(name)
            if exclude and any(p.search(name) for p in exclude):
                skipped.append((name, "excluded by exclude="))
            elif include and not any(p.search(name) for p in include):
                skipped.append((name, "not matched by include="))
            elif (reason := _unusable(module)) is not None:
                skipped.append((name, reason))
                warnings_.append(f"layer {name!r} skipped: {reason}")
            else:
                eligible.append(name)
        elif isinstance(module, nn.MultiheadAttention):
            skipped.append((name or "<root>", "MultiheadAttention: attention projections are left alone"))
        elif any(True for _ in module.parameters(recurse=False)) and not below_attention:
            kind = type(module).__name__
            skipped.append((name or "<root>", f"{kind}: not a Linear/Conv weight layer, left alone"))
    _check_patterns_match("include", include, layers, "weight layer")
    _check_patterns_match("exclude", exclude, layers, "weight layer")
    eligible, tied_warnings = _tied(model, eligible, skipped)
    return eligible, skipped, warnings_ + tied_warnings


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> the qualified names of the modules that hold it (tied weights: several)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                owners.setdefault(id(parameter), []).append(name)
    return owners


def _tied(model: nn.Module, eligible: list[str], skipped: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Identify parameters by identity: a weight layer whose weight is also held by a module that the
    plan leaves alone (a tied embedding, an excluded layer) is left alone too (appended to
    ``skipped``). Returns the layers kept and the warnings."""
    owners, planned, kept, warnings_ = _owners(model), set(eligible), [], []
    modules = dict(model.named_modules())
    for name in eligible:
        alone = [o for o in owners[id(modules[name].weight)] if o not in planned]
        if alone:
            reason = f"shared with {alone[0] or '<root>'!r} which is left alone"
            skipped.append((name, reason))
            warnings_.append(f"layer {name!r} skipped: its weight is {reason}")
            planned.discard(name)
        else:
            kept.append(name)
    return kept, warnings_


def _check_patterns_match(argument: str, patterns: Sequence[re.Pattern[str]], names: list[str], what: str) -> None:
    """A pattern that matches none of ``names`` is a typo: raise ValueError listing the candidates."""
    for pattern in patterns:
        if not any(pattern.search(name) for name in names):
            shown = ", ".join(repr(name) for name in names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            raise ValueError(
                f"{argument} pattern {pattern.pattern!r} matches no {what} (re.search on qualified module names); "
                f"the {what}s are: {shown or 'none'}"
            )


def _no_layer_error(model: nn.Module, skipped: list[tuple[str, str]], include: Patterns, exclude: Patterns) -> None:
    seen = Counter(type(m).__name__ for _, m in model.named_modules())
    reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped[:8]) or "none"
    raise ValueError(
        f"no eligible layer in {type(model).__name__}: the schemes initialize "
        f"{', '.join(t.__name__ for t in WEIGHT_LAYERS)}; modules seen: {dict(seen)}; skipped: {reasons}. "
        f"Fix include={include!r} / exclude={exclude!r}, unfreeze or materialize the weights, or run a "
        "forward pass first for lazy modules"
    )


def check_plan_arguments(
    scheme: str,
    distribution: str,
    moment: float | None,
    negative_slope: SlopeOverride,
    include: Patterns,
    exclude: Patterns,
    conv: str | None,
) -> tuple[float | list[tuple[re.Pattern[str], float]] | None, list[re.Pattern[str]], list[re.Pattern[str]]]:
    """Validate :func:`plan_init`'s arguments without a model (e.g. in a callback's ``__init__``).

    Returns the parsed slope overrides and the compiled include/exclude patterns; raises ValueError
    naming the argument, the bad value and the fix.
    """
    _init.validate_scheme(scheme, distribution, moment)
    _conv_draw(scheme, conv)
    return _slope_overrides(negative_slope), _patterns("include", include), _patterns("exclude", exclude)


def _conv_draw(scheme: str, conv: str | None) -> str:
    """How convolutions are drawn: ``conv``, or the scheme's default (``"delta"`` for Stiefel)."""
    if conv is not None and (not isinstance(conv, str) or conv not in CONV_DRAWS):
        raise ValueError(
            f"conv={conv!r} is not a conv draw: pass None (the scheme's default), 'full' (the flattened "
            "(C_out, C_in/groups * prod(kernel)) matrix) or 'delta' (one (C_out, C_in/groups) matrix at the "
            "kernel's centre tap, other taps 0)"
        )
    if scheme == "stiefel" and conv == "full":
        raise ValueError(
            "conv='full' with scheme='stiefel': the flattened conv matrix's row sums sqrt(C_in prod(kernel) / C_out) "
            "amplify the mean at every layer (+19 log-gain over 20 3x3 ReLU layers); Stiefel uses the delta "
            "construction for convolutions: pass conv=None or conv='delta'"
        )
    return conv or ("delta" if scheme == "stiefel" else "full")


def plan_init(
    model: nn.Module,
    scheme: str = "lyapunov",
    distribution: str = "orthogonal",
    moment: float | None = None,
    negative_slope: SlopeOverride = None,
    include: Patterns = None,
    exclude: Patterns = None,
    conv: str | None = None,
    example_input: Any = None,
    forward: Forward | None = None,
) -> InitPlan:
    """Plan an initialization scheme on every eligible weight layer of ``model``; touch no weight.

    Per layer ``l`` (forward order): fans ``(d_in, d_out)`` (module docstring), the slope ``a`` of the
    following activation (detected, or ``negative_slope``: a float for every layer, or a mapping
    regex -> slope, the first ``re.search`` match on the qualified name wins), and
    ``init.resolve_init(scheme, d_in, d_out, a, distribution, moment)``: the scale, the exponent
    ``lambda_l`` and the variance ``s_l^2``. The plan predicts
    ``log r(output) - log r(input) ~ N(sum_l lambda_l, sum_l s_l^2)`` for a plain chain.
    ``include`` / ``exclude``: regex or list of regexes on qualified module names. ``conv``: how
    convolutions are drawn, ``"full"`` (the whole kernel) or ``"delta"`` (a matrix at the centre
    tap, module docstring); None: ``"delta"`` for ``scheme="stiefel"``, ``"full"`` otherwise
    (``scheme="zero"`` is always centre-tap).

    How the slopes are found (the plan's "slope from" column): with ``example_input`` (what the
    forward takes: a tensor, a tuple of arguments or a dict of keyword arguments; or whatever
    ``forward(model, example_input)`` takes), one forward pass is observed under ``torch.no_grad()``
    and each layer's output is followed to the activation that consumes it ("observed"; the
    model's buffers, training flags and RNG states are restored afterwards). Without it, torch.fx
    tracing ("fx"); layers neither can see, by module registration order ("module order", with
    one warning naming them). ``negative_slope`` overrides ("override"). "calls" is how often the
    layer ran in the observed pass.

    Raises ValueError (naming the argument, the value and the fix) for an unknown scheme or
    distribution, a slope outside [0, 1], a moment outside its range, or no eligible layer.

    Example::

        model = nn.Sequential(nn.Linear(8, 4), nn.LeakyReLU(0.1), nn.Linear(4, 1))
        print(plan_init(model, scheme="lyapunov", example_input=torch.randn(16, 8)))  # a table; model unchanged
    """
    check_module("model", model)
    overrides, include_patterns, exclude_patterns = check_plan_arguments(
        scheme, distribution, moment, negative_slope, include, exclude, conv
    )
    if forward is not None and not callable(forward):
        invalid("forward", forward, "None or a callable forward(model, example_input)")
    if forward is not None and example_input is None:
        raise ValueError("forward= is only used to observe example_input=: pass example_input= too, or drop forward=")
    conv_draw = _conv_draw(scheme, conv)
    eligible, skipped, warnings_ = _discover(model, include_patterns, exclude_patterns)
    if not eligible:
        _no_layer_error(model, skipped, include, exclude)
    if isinstance(overrides, list):
        _check_patterns_match("negative_slope", [pattern for pattern, _ in overrides], eligible, "planned layer")
    slopes, order, model_warnings = find_slopes(model, eligible, example_input, forward)
    warnings_ += model_warnings
    modules = dict(model.named_modules())
    layers: list[LayerPlan] = []
    drawn: dict[int, LayerPlan] = {}  # id(weight) -> the layer that draws it (the first in forward order)
    for name in order:
        module = modules[name]
        forced = _override(name, overrides)
        info = SlopeInfo(forced, "override", found_by="override") if forced is not None else slopes[name]
        if info.warning:
            warnings_.append(info.warning)
        if module.bias is not None and not module.bias.requires_grad:
            warnings_.append(f"layer {name!r}: frozen bias left alone (the schemes assume a zero bias)")
        first = drawn.get(id(module.weight))
        if first is not None:
            _share(first, name, module, info, warnings_)
            continue
        drawn[id(module.weight)] = _layer_plan(name, module, info, scheme, distribution, moment, conv_draw)
        layers.append(drawn[id(module.weight)])
    _keep_shared_biases(model, layers, warnings_)
    plan = InitPlan(scheme, distribution, moment, layers, skipped, warnings_, conv_draw)
    for message in warnings_:
        warnings.warn(message, stacklevel=2)
    return plan


def _keep_shared_biases(model: nn.Module, layers: list[LayerPlan], warnings_: list[str]) -> None:
    """A bias also held by a module that the plan leaves alone is left alone too (as tied weights are)."""
    owners = _owners(model)
    planned = {name for layer in layers for name in (layer.name, *layer.shared_with)}
    for layer in layers:
        for name, module in zip((layer.name, *layer.shared_with), (layer.module, *layer.sharers)):
            if not _zeroable_bias(module):
                continue
            alone = [o for o in owners[id(module.bias)] if o not in planned]
            if alone:
                layer.kept_biases += (name,)
                warnings_.append(f"layer {name!r}: bias left alone, it is shared with {alone[0] or '<root>'!r} "
                                 "which the plan leaves alone")


def _share(first: LayerPlan, name: str, module: nn.Module, info: SlopeInfo, warnings_: list[str]) -> None:
    """``module`` holds the same weight Parameter as ``first``: drawn once, by ``first``."""
    first.shared_with += (name,)
    first.sharers += (module,)
    if abs(info.slope - first.negative_slope) > 1e-12:
        warnings_.append(
            f"layer {name!r} shares its weight with {first.name!r} but is followed by slope {info.slope:g}, "
            f"not {first.negative_slope:g}: the weight is drawn once, for {first.name!r}'s slope; pass "
            f"negative_slope={{{first.name!r}: ...}} to choose"
        )


def _layer_plan(name: str, module: nn.Module, info: SlopeInfo, scheme: str, distribution: str,
                moment: float | None, conv: str = "full") -> LayerPlan:
    delta = conv == "delta" and not isinstance(module, nn.Linear) and scheme != "zero"
    d_in, d_out, groups = _fans(module, delta)
    try:
        layer_init = _init.resolve_init(scheme, d_in, d_out, info.slope, distribution=distribution, moment=moment,
                                        drawn_in=_drawn_in(module, delta))
    except ValueError as error:
        raise ValueError(f"layer {name!r} (d_in={d_in}, d_out={d_out}, slope={info.slope:g}): {error}") from error
    bias = module.bias
    return LayerPlan(name, type(module).__name__, tuple(module.weight.shape), d_in, d_out, groups, info.slope,
                     info.source, layer_init, bias is not None and bias.requires_grad,
                     isinstance(module, _TRANSPOSED), taps=_delta_taps(module) if delta else None, module=module,
                     slope_from=info.found_by, calls=info.calls)


def check_generator(generator: torch.Generator | None) -> None:
    """Weights are drawn on the CPU: refuse a generator on another device, naming the fix."""
    _checks.check_generator("generator", generator)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"generator on {generator.device} is not supported: weights are drawn on the CPU for reproducibility "
            "and copied to the parameters' device; pass a torch.Generator() (CPU)"
        )


def apply_init(
    model: nn.Module,
    scheme: str = "lyapunov",
    distribution: str = "orthogonal",
    moment: float | None = None,
    negative_slope: SlopeOverride = None,
    include: Patterns = None,
    exclude: Patterns = None,
    generator: torch.Generator | None = None,
    conv: str | None = None,
    example_input: Any = None,
    forward: Forward | None = None,
    calibrate: str | None = None,
    calibrate_target: float = 1.0,
) -> InitPlan:
    """Initialize ``model`` in place by :func:`plan_init`'s plan and return that plan.

    All-or-nothing: the plan is validated and every new weight drawn (on the CPU, in plan order,
    from ``generator``, or torch's default CPU generator) before any parameter is written, and what
    is written over is copied first: on any error (``KeyboardInterrupt`` included) every weight,
    bias and the generator's state are as before. The same seed or generator state gives
    bit-identical weights on every device. Biases of planned layers are set to 0.
    ``example_input`` / ``forward``: observe one forward pass to find each layer's activation (see
    :func:`plan_init`).

    ``calibrate="layers"`` or ``"output"`` then rescales the drawn weights on ``example_input`` (a
    real batch, what the forward takes; ``forward(model, example_input)`` if given):
    ``"layers"``: each layer's output to root-mean-square 1 in forward order (the last to
    ``calibrate_target``); ``"output"``: one factor ``c^{1/L}`` on every layer so that the output's
    root-mean-square is ``calibrate_target`` (:mod:`lightning_lyapunov.calibration`). Each layer's
    factor is ``plan.layers[l].calibration``, its measured log-gain after calibration
    ``plan.layers[l].measured_log_gain``. On any error during calibration, every weight and bias is
    restored.

    Example::

        model = nn.Sequential(*[m for _ in range(50) for m in (nn.Linear(4, 4), nn.LeakyReLU(0.1))])
        plan = apply_init(model, scheme="lyapunov", generator=torch.Generator().manual_seed(0))
        plan.predicted_drift  # ~0: the log-norm neither grows nor shrinks with depth
    """
    from .calibration import calibrate_, check_calibrate

    check_generator(generator)
    check_calibrate(calibrate, calibrate_target)
    if calibrate is not None and example_input is None:
        raise ValueError(f"calibrate={calibrate!r} needs example_input= (a batch of real inputs); "
                         "pass one, or calibrate=None")
    plan = plan_init(model, scheme, distribution, moment, negative_slope, include, exclude, conv, example_input,
                     forward)
    with plan.restoring(generator):
        plan.write(plan.draw(generator))
        if calibrate is not None:
            calibrate_(model, plan, example_input, calibrate, calibrate_target, forward)
    return plan


def swap_activations(
    model: nn.Module,
    old: type[nn.Module] | tuple[type[nn.Module], ...] = nn.ReLU,
    new: Callable[[nn.Module], nn.Module] | nn.Module | None = None,
) -> list[str]:
    """Replace every submodule that is an instance of ``old`` by ``new(old_module)``; in place.

    ``new`` is a factory called with the module it replaces, or a module (deep-copied for each
    replacement); the default is ``nn.LeakyReLU(0.1)`` keeping ``inplace``. A module registered under
    several names is replaced by one shared new module. Returns the qualified names replaced.
    Functional activations (``F.relu(x)`` inside ``forward``) are not modules and cannot be swapped:
    edit the model's code (``plan_init`` detects and reports them).

    Example::

        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
        swap_activations(model, nn.ReLU, lambda m: nn.LeakyReLU(0.1))   # -> ['1']
    """
    check_module("model", model)
    old = _check_activation_types(old)
    factory = _activation_factory(new)
    if isinstance(model, old):
        raise ValueError(f"model itself is a {type(model).__name__}: wrap it in a container before swapping")
    targets = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
               if name and isinstance(module, old)]
    made: dict[int, nn.Module] = {}
    for _, module in targets:  # build every replacement first: a bad factory changes nothing
        if id(module) not in made:
            made[id(module)] = replacement = factory(module)
            if not isinstance(replacement, nn.Module):
                invalid(f"new({type(module).__name__})", replacement, "an nn.Module (new must return one)")
    replaced = []
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, made[id(module)])
        replaced.append(name)
    return replaced


def _check_activation_types(old: Any) -> tuple[type[nn.Module], ...]:
    """``old`` as a tuple of nn.Module classes; a string, an instance or anything else is refused."""
    items = old if isinstance(old, tuple) else (old,)
    if not items:
        raise ValueError("old=() names no activation class; pass e.g. old=nn.ReLU")
    for item in items:
        if not (isinstance(item, type) and issubclass(item, nn.Module)):
            hint = ""
            if isinstance(item, str) and isinstance(getattr(nn, item, None), type):
                hint = f"pass the class: old=nn.{item}"
            elif isinstance(item, nn.Module):
                hint = f"pass the class: old=nn.{type(item).__name__}"
            invalid("old", old, "an nn.Module class or a tuple of them (e.g. nn.ReLU or (nn.ReLU, nn.GELU))", hint)
    return items


def _activation_factory(new: Any) -> Callable[[nn.Module], nn.Module]:
    """``new`` as a factory ``old module -> new module`` (see :func:`swap_activations`)."""
    if new is None:
        return lambda module: nn.LeakyReLU(0.1, inplace=getattr(module, "inplace", False))
    if isinstance(new, nn.Module):
        return lambda module: copy.deepcopy(new)
    if isinstance(new, type):
        invalid("new", new, "an nn.Module instance or a factory, not a class",
                f"pass new=nn.{new.__name__}(...) or new=lambda old: nn.{new.__name__}(...)")
    if not callable(new):
        invalid("new", new, "an nn.Module, a factory old_module -> nn.Module, or None (LeakyReLU(0.1))")
    return new
