"""The initialization plan: per layer, what is drawn and what theory predicts; and what was applied.

:func:`~lightning_lyapunov.plan_init` builds an :class:`InitPlan` (one :class:`LayerPlan` per weight
layer, in forward order) without touching a weight. The plan draws (:meth:`InitPlan.draw`, on the
CPU, from one generator), writes all or nothing (:meth:`InitPlan.write`) and restores on error
(:meth:`InitPlan.restoring`). After :func:`~lightning_lyapunov.apply_init` it also records what was
applied: :attr:`InitPlan.sampling` (the selection among candidate draws) and
:attr:`InitPlan.calibration` (the factors and the log-gains measured on the batch).
``print(plan)`` shows it as a table.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from . import _checks, chain_theory
from . import init as _init
from ._checks import check_bool, check_int, check_tensor, invalid
from .chain_init import exact_label
from .settings import InitSpec

if TYPE_CHECKING:  # results attached by the initialization engine
    from .calibration import CalibrationResult
    from .sampling import SamplingReport

__all__ = ["InitPlan", "LayerPlan", "check_cpu_generator"]


@dataclass
class LayerPlan:
    """What the plan does to one weight layer (``module`` is the layer itself).

    ``shared_with``: the other layers whose weight is this very Parameter (tied weights): it is
    drawn once, here, and their biases are zeroed too, except those in ``kept_biases`` (a bias also held
    by a module that the plan leaves alone is left alone). ``taps``: for a delta conv, the kernel
    positions that hold a drawn matrix (every other tap is 0); None for a full draw. ``slope_source``
    says what was found after the layer, ``slope_found_by`` how (``"observed"``, ``"fx"``, ``"module
    order"``, ``"override"``); ``calls``: how often the layer ran in the observed pass. ``activation``:
    the activation after the layer when it is not a Leaky ReLU (:mod:`~lightning_lyapunov.chain_theory`);
    ``exact_scale``: the operating scale at which the scale chain planned it (None: by policy, as
    ``negative_slope``); ``stability``: its fixed point's there (:attr:`theory` says all three).
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
    slope_found_by: str = "fx"
    calls: int | None = None
    kept_biases: tuple[str, ...] = ()
    activation: chain_theory.Activation | None = None
    exact_scale: float | None = None
    stability: str | None = None

    @property
    def theory(self) -> str:
        """How theory treats the activation after the layer: ``"closed form"`` (Leaky ReLU, none),
        ``"gelu exact at s=1 (unstable)"`` (planned by the scale chain at operating scale ``s``, with
        the stability of its fixed point), or ``"policy"`` (treated as its ``negative_slope``)."""
        if self.activation is None or self.activation.homogeneous:
            return "policy" if self.slope_source.startswith("policy:") else "closed form"
        if self.exact_scale is None:
            return "policy"
        return exact_label(self.activation, self.exact_scale, self.stability)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (no module) for logging."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("module", "sharers", "init", "activation")}
        out["activation"] = None if self.activation is None else repr(self.activation)
        out["theory"] = self.theory
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
        check_cpu_generator(generator)
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
        biases = [m.bias for n, m in holders if zeroable_bias(m) and n not in self.kept_biases] if self.zero_bias else []
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


@dataclass
class InitPlan:
    """The per-layer plan: ``layers`` in forward order, ``skipped`` (name, reason), ``warnings``; the
    ``spec`` it was made from; and, once applied, ``sampling`` and ``calibration`` (None otherwise).

    ``predicted_drift`` = sum of the per-layer exponents (the expected change of log r, r = ||x|| /
    sqrt(d), from input to output; after a calibration, the sum of the measured log-gains,
    ``layer_log_gains``) and ``predicted_spread`` = sqrt(sum of per-layer variances) (the standard
    deviation of theory's draw by the CLT); None when the theory does not apply to some layer (ZerO).
    ``operating_scale``: when the activations are not all Leaky ReLUs and the scale chain planned the
    layers (:mod:`~lightning_lyapunov.chain_init`), the per-unit rms every layer's pre-activation keeps
    in expectation (the example input's, or 1); the exponents and variances are then the chain's
    per-layer changes of the mean and variance of the log-norm, and ``chain`` holds the whole
    :class:`~lightning_lyapunov.chain_theory.ChainPrediction` (mean, spread and alive probability at every
    depth). None otherwise.
    """

    spec: InitSpec
    layers: list[LayerPlan]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sampling: SamplingReport | None = None
    calibration: CalibrationResult | None = None
    operating_scale: float | None = None
    chain: chain_theory.ChainPrediction | None = field(default=None, repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return self.spec.scheme

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def layer_log_gains(self) -> list[float | None]:
        """Per layer, the change of log r the plan expects at step 0: theory's exponent, or after a
        calibration the log-gain measured on the calibration batch (where it is finite)."""
        measured = self.calibration.log_gains if self.calibration is not None else [None] * len(self.layers)
        return [gain if _finite(gain) else layer.init.exponent for layer, gain in zip(self.layers, measured)]

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
        check_cpu_generator(generator)
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
        (torch's default CPU generator when None), then re-raise. Nested scopes each restore what
        they saw on entry.

        Example::

            with plan.restoring(generator):
                plan.write(plan.draw(generator))
                check(model)   # raising here leaves the model and the generator as they were
        """
        check_cpu_generator(generator)
        rng = generator if generator is not None else torch.default_generator
        with restored_on_error((t for layer in self.layers for t in layer.targets()), rng):
            yield

    def applied(self, seed: str = "", batch: str = "the example input") -> str:
        """One line: what applying this plan did (``initialized 41 layers: scheme='lyapunov', orthogonal
        weights, seed 3; sampled (...); calibrated ('layers') on <batch>``)."""
        draws = "/".join(sorted({layer.init.distribution for layer in self.layers}))
        line = f"initialized {len(self.layers)} layers: scheme={self.scheme!r}, {draws} weights" + (f", {seed}" if seed else "")
        if self.sampling is not None:
            line += f"; {self.sampling.summary()}"
        if self.calibration is not None:
            line += f"; calibrated ({self.calibration.method!r}) on {batch}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values for logging (JSON/YAML serializable)."""
        return {
            **self.spec.settings(),
            "conv": self.spec.conv_draw,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [list(item) for item in self.skipped],
            "warnings": list(self.warnings),
            "predicted_drift": self.predicted_drift,
            "predicted_spread": self.predicted_spread,
            "operating_scale": self.operating_scale,
            "sampling": None if self.sampling is None else self.sampling.summary(),
            "calibration": None if self.calibration is None else asdict(self.calibration),
        }

    def __str__(self) -> str:
        return self.describe()

    def describe(self, warnings: bool = True, fold: int = 3, details: bool = False) -> str:
        """The plan as a table; ``print(plan)`` shows ``describe()``, which fits 120 columns for the usual
        model (``details=True``: every column, in full).

        The header names what is drawn (``distribution`` is the weights' law of every layer,
        e.g. ``'gaussian'`` for He whatever ``distribution=`` was given; ``moment`` only for
        ``fractional``). ``fold``: runs of at least this many consecutive layers identical but for
        their names are shown as one row (``3-38  net.6 ... 76 (x36)  2x2 ...``; 0 shows every layer);
        after a calibration a folded row shows the range of the factors and measured log-gains
        (``-0.9977 .. 1.3048``), and in a plan by the scale chain the range of the scales, exponents and
        variances, which change a little from layer to layer. Without ``details`` the columns that say nothing new are left out: the
        type and the draw when every layer has the same (the header says which), ``d_in``/``d_out``
        (the shape holds them), and ``slope from`` says how the slope was found (``observed``,
        ``fx``, ``module order``, ``override``, or ``policy:RReLU``) without what was found; the ``theory``
        column (shown when an activation is not a Leaky ReLU) says how theory treats each layer
        (:attr:`LayerPlan.theory`: ``closed form``, ``gelu exact at s=1 (unstable)`` or ``policy``); a
        layer planned by the scale chain has no slope (``-``): theory uses its activation, not a slope.
        ``warnings=False`` leaves out the plan's warnings (already emitted as Python warnings by
        :func:`~lightning_lyapunov.plan_init`).
        """
        check_bool("warnings", warnings)
        check_int("fold", fold, minimum=0, allowed="an integer >= 0 (0 shows every layer)")
        check_bool("details", details)
        header = ("#", "layer", "type", "shape", "d_in", "d_out", "slope", "slope from", "theory", "calls", "draw",
                  "scale", "exponent", "variance", "shared with")
        body = [_row(i, layer, details) for i, layer in enumerate(self.layers)]
        unused = [c for c, name in enumerate(header) if name in ("shared with", "calls") and
                  all(row[c] in ("-", "1") for row in body)]  # no tied weights, no layer called twice
        if all(layer.activation is None for layer in self.layers):  # Leaky ReLUs only: the closed forms
            unused.append(header.index("theory"))
        if not details:
            unused += [c for c, name in enumerate(header) if name in ("d_in", "d_out") or
                       name in ("type", "draw") and len({row[c] for row in body}) == 1]
        header, body = _drop(header, unused), [_drop(row, unused) for row in body]
        calibration = self.calibration
        uncalled = set(calibration.uncalled) if calibration is not None else set()
        if calibration is not None:
            header += ("calibration", "log-gain")
            body = [row + (("-", "-") if layer.name in uncalled else (_fmt(factor), _fmt(gain)))
                    for row, layer, factor, gain in zip(body, self.layers, calibration.factors, calibration.log_gains)]
        spanned = [c for c, name in enumerate(header) if name in ("scale", "exponent", "variance")
                   and self.operating_scale is not None]  # the scale chain's values change a little per layer
        rows = [header] + _fold_rows(body, fold, ranged=2 if calibration is not None else 0, short=not details,
                                     spanned=spanned)
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        draws = sorted({layer.init.distribution for layer in self.layers})
        kinds = sorted({layer.kind for layer in self.layers})
        spec = self.spec
        moment = f", moment={spec.moment!r}" if spec.scheme == "fractional" else ""
        plural = "s" if len(self.layers) != 1 else ""
        what = f"{len(self.layers)} {kinds[0] + ' ' if len(kinds) == 1 and 'type' not in header else ''}layer{plural}"
        lines = [
            f"InitPlan: scheme={spec.scheme!r}, distribution={'/'.join(draws)!r}{moment}"
            + (f", conv={spec.conv_draw!r}" if any(layer.taps is not None for layer in self.layers) else "") + "; "
            f"{what}, biases of planned layers set to 0"
        ]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(2, "  ".join("-" * w for w in widths))
        if self.sampling is not None:
            lines.append(self.sampling.summary())
        exponents = [layer.init.exponent for layer in self.layers]
        spread = self.predicted_spread
        theory = ("n/a (theory does not apply to every layer)" if None in exponents or spread is None
                  else f"{_signed(sum(exponents), 3)} ({_signed(sum(exponents) / len(exponents), 4)} per layer) "
                       f"+- {spread:.3f} (sqrt of the summed variances)")
        if calibration is not None:
            gains = [g for layer, g in zip(self.layers, calibration.log_gains) if layer.name not in uncalled]
            measured = sum(gains) if all(_finite(g) for g in gains) else math.nan
            lines.append(f"calibrated ({calibration.method!r}) on the example input: weights times 'calibration'; "
                         f"the 'log-gain's measured there sum to {measured:+.3f}")
            if calibration.branch_scale is not None:
                lines.append(_residual_line(calibration))
            if uncalled:
                lines.append(f"not calibrated, theory's draw kept: {', '.join(sorted(uncalled, key=self.layer_names.index))}"
                             " (not called by the forward pass on the example input; '-' above)")
            drift = self.predicted_drift
            predicted = "n/a" if drift is None else f"{_signed(drift, 3)} ({_signed(drift / len(self.layers), 4)} per layer)"
            lines.append(f"predicted log-norm drift input -> output: {predicted}: the diagnostics' prediction from here on")
            lines.append(f"before calibration, theory's log-norm drift: {theory}")
        else:
            lines.append(f"predicted log-norm drift input -> output: {theory}")
        if self.operating_scale is not None:
            unstable = any(layer.stability == "unstable" for layer in self.layers)
            lines.append(f"scale chain (docs/theory.md, section 7): the activations are not all Leaky ReLUs; exact "
                         f"at the operating scale s={self.operating_scale:.3g} (the input's per-unit rms), the expected "
                         "log-norm stays at log s at every depth" + ("; an unstable fixed point widens the spread"
                                                                     if unstable else ""))
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.skipped:
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            lines.append(f"skipped {shown}: {reason}")
        if warnings:
            lines += [f"warning: {message}" for message in self.warnings]
        return "\n".join(lines)


def _residual_line(calibration: CalibrationResult) -> str:
    """One line on the residual blocks the calibration scaled (docs/theory.md section 9)."""
    n, scale = len(calibration.branches), calibration.branch_scale
    ratios = [r for r in calibration.branch_ratios if _finite(r)]
    measured = f"; measured {min(ratios):.4g} .. {max(ratios):.4g}" if ratios else ""
    return (f"residual blocks: {n} (branches ending in {calibration.branches[0]}{' .. ' + calibration.branches[-1] if n > 1 else ''}), each branch calibrated to "
            f"branch scale {scale:.4g} times the stream's rms{measured}: the stream's rms grows by "
            f"(1 + {scale:.4g}^2)^({n}/2) = {(1 + scale * scale) ** (n / 2):.4g} over them")


def check_cpu_generator(generator: torch.Generator | None) -> None:
    """Weights are drawn on the CPU: refuse a generator on another device, naming the fix."""
    _checks.check_generator("generator", generator)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"generator on {generator.device} is not supported: weights are drawn on the CPU for reproducibility "
            "and copied to the parameters' device; pass a torch.Generator() (CPU)"
        )


def zeroable_bias(module: nn.Module) -> bool:
    """Whether the plan zeroes ``module``'s bias: it has one, and it is trainable."""
    bias = getattr(module, "bias", None)
    return isinstance(bias, torch.Tensor) and bias.requires_grad


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@contextlib.contextmanager
def restored_on_error(tensors: Iterable[torch.Tensor], generator: torch.Generator | None = None) -> Iterator[None]:
    """Context: on any exception inside it (``KeyboardInterrupt`` included), copy back the values
    ``tensors`` held on entry (each tensor once, however often it is listed) and the state of
    ``generator`` (if given), then re-raise. What :meth:`InitPlan.restoring` and the calibration's
    normalization scales build on."""
    targets = list({id(t): t for t in tensors}.values())
    rng_state = generator.get_state() if generator is not None else None
    with torch.no_grad():
        saved = [t.detach().clone() for t in targets]
    try:
        yield
    except BaseException:
        _restore(targets, saved)
        if generator is not None:
            generator.set_state(rng_state)
        raise


def _restore(targets: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Copy saved values back; a tensor that cannot be written (the cause of the error) was not."""
    with torch.no_grad():
        for tensor, value in zip(targets, saved):
            try:
                tensor.copy_(value)
            except Exception:  # noqa: BLE001 - unwritable, hence unchanged; the original error propagates
                pass


# ---------------------------------------------------------------------- the table


def _drop(row: tuple[str, ...], columns: Sequence[int]) -> tuple[str, ...]:
    return tuple(cell for c, cell in enumerate(row) if c not in columns)


def _fold_rows(rows: list[tuple[str, ...]], fold: int, ranged: int = 0, short: bool = False,
               spanned: Sequence[int] = ()) -> list[tuple[str, ...]]:
    """Rows (index, name, *rest): runs of ``>= fold`` consecutive rows with equal ``rest`` become one.
    The last ``ranged`` columns (measured values) and the columns ``spanned`` (a scale chain's per-layer
    values) may differ within a run: a folded row shows their range ``min .. max``. ``short``: the
    last name without the prefix it shares with the first (``model.net.2 ... 78``)."""
    width = len(rows[0]) if rows else 0
    free = set(range(width - ranged, width)) | set(spanned)
    fixed = [c for c in range(2, width) if c not in free]
    out: list[tuple[str, ...]] = []
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and all(rows[end][c] == rows[start][c] for c in fixed):
            end += 1
        if fold and end - start >= fold:
            first, last = rows[start], rows[end - 1]
            cells = tuple(_span([row[c] for row in rows[start:end]]) if c in free else first[c] for c in range(2, width))
            shown = _suffix(first[1], last[1]) if short else last[1]
            out.append((f"{first[0]}-{last[0]}", f"{first[1]} ... {shown} (x{end - start})", *cells))
        else:
            out += rows[start:end]
        start = end
    return out


def _suffix(first: str, last: str) -> str:
    """``last`` less the dotted prefix it shares with ``first`` (``model.net.78`` after ``model.net.2``: ``78``)."""
    shared = 0
    for a, b in zip(first.split("."), last.split(".")[:-1]):
        if a != b:
            break
        shared += len(a) + 1
    return last[shared:]


def _span(cells: list[str]) -> str:
    values = sorted(set(cells), key=lambda cell: float(cell) if cell not in ("-", "nan") else math.inf)
    return values[0] if len(values) == 1 else f"{values[0]} .. {values[-1]}"


def _signed(value: float, digits: int) -> str:
    """``+0.0130``; ``+0.0000``, never ``-0.0000``."""
    return f"{0.0 if abs(value) < 0.5 * 10**-digits else value:+.{digits}f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{0.0 if abs(value) < 5e-5 else value:.4f}"


def _row(index: int, layer: LayerPlan, details: bool = True) -> tuple[str, ...]:
    groups = f" g={layer.groups}" if layer.groups > 1 else ""
    found = layer.slope_source if layer.slope_found_by in layer.slope_source else f"{layer.slope_found_by}: {layer.slope_source}"
    if not details:  # how, not what: the slope column says what
        found = layer.slope_source.split(" (")[0] if layer.slope_source.startswith("policy:") else layer.slope_found_by
    slope = "-" if layer.exact_scale is not None else f"{layer.negative_slope:g}"  # the scale chain uses no slope
    return (str(index), layer.name, layer.kind + groups, "x".join(map(str, layer.shape)), str(layer.d_in),
            str(layer.d_out), slope, found, layer.theory,
            "-" if layer.calls is None else str(layer.calls),
            layer.init.distribution + (" delta" if layer.taps is not None else ""),
            _fmt(layer.init.scale), _fmt(layer.init.exponent), _fmt(layer.init.variance),
            ", ".join(layer.shared_with) or "-")
