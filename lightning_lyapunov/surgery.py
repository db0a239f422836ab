"""Model surgery: find the weight layers of any ``nn.Module`` and plan an initialization scheme on them.

``plan_init`` finds the weight layers (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d), tied weights
and biases, the fans and the slope of the activation after each layer
(:mod:`lightning_lyapunov.observe`, :mod:`lightning_lyapunov.activations`), and resolves the scheme
per layer (:func:`lightning_lyapunov.init.resolve_init`) into an
:class:`~lightning_lyapunov.InitPlan` without touching a weight. Applying it is
:func:`lightning_lyapunov.apply_init`'s (:mod:`lightning_lyapunov.initialize`).

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

import itertools
import math
import re
from collections import Counter
from typing import Any, Sequence

from torch import nn
from torch.nn.utils import parametrize

from . import init as _init
from ._checks import check_module, invalid
from ._forward import Forward
from ._warn import warn
from .activations import WEIGHT_LAYERS, SlopeInfo, first_line, policy_warning
from .chain_init import RANDOM_SCHEMES, chain_inits, unstable_at_width_8, uses_chain
from .chain_theory import ChainPrediction
from .observe import find_slopes
from .plan import InitPlan, LayerPlan, zeroable_bias
from .settings import InitSpec

__all__ = ["eligible_layers", "plan_init"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


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


def _layer_fans(module: nn.Module, delta: bool = False) -> tuple[int, int, int]:
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


def _no_layer_error(model: nn.Module, skipped: list[tuple[str, str]], include: Any, exclude: Any) -> None:
    seen = Counter(type(m).__name__ for _, m in model.named_modules())
    reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped[:8]) or "none"
    raise ValueError(
        f"no eligible layer in {type(model).__name__}: the schemes initialize "
        f"{', '.join(t.__name__ for t in WEIGHT_LAYERS)}; modules seen: {dict(seen)}; skipped: {reasons}. "
        f"Fix include={include!r} / exclude={exclude!r}, unfreeze or materialize the weights, or run a "
        "forward pass first for lazy modules"
    )


def plan_init(
    model: nn.Module,
    spec: InitSpec | None = None,
    *,
    example_input: Any = None,
    forward: Forward | None = None,
    **settings: Any,
) -> InitPlan:
    """Plan an initialization scheme on every eligible weight layer of ``model``; touch no weight.

    ``spec``: an :class:`~lightning_lyapunov.InitSpec`; ``settings`` are its fields as keyword
    arguments (``scheme="he"``, ``negative_slope=0.1``, ...), on their own or overriding ``spec``'s.
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
    spec = spec_of(spec, settings)
    if forward is not None and not callable(forward):
        invalid("forward", forward, "None or a callable forward(model, example_input)")
    if forward is not None and example_input is None:
        raise ValueError("forward= is only used to observe example_input=: pass example_input= too, or drop forward=")
    eligible, skipped, warnings_ = _discover(model, spec.include_patterns, spec.exclude_patterns)
    if not eligible:
        _no_layer_error(model, skipped, spec.include, spec.exclude)
    _check_patterns_match("negative_slope", spec.slope_patterns, eligible, "planned layer")
    slopes, order, model_warnings = find_slopes(model, eligible, example_input, forward)
    warnings_ += model_warnings
    modules = dict(model.named_modules())
    layers: list[LayerPlan] = []
    drawn: dict[int, LayerPlan] = {}  # id(weight) -> the layer that draws it (the first in forward order)
    by_policy: list[tuple[str, str, float]] = []  # one warning for all the layers treated by policy
    for name in order:
        module = modules[name]
        forced = spec.slope_for(name)
        info = SlopeInfo(forced, "override", found_by="override") if forced is not None else slopes[name]
        if info.policy is not None:
            by_policy.append((name, info.policy, info.slope))
        elif info.warning:
            warnings_.append(info.warning)
        if module.bias is not None and not module.bias.requires_grad:
            warnings_.append(f"layer {name!r}: frozen bias left alone (the schemes assume a zero bias)")
        first = drawn.get(id(module.weight))
        if first is not None:
            _share(first, name, module, info, warnings_)
            continue
        drawn[id(module.weight)] = _layer_plan(name, module, info, spec)
        layers.append(drawn[id(module.weight)])
    _keep_shared_biases(model, layers, warnings_)
    scale, chain = _by_chain(layers, spec, slopes[layers[0].name].input_rms if layers[0].name in slopes else None,
                             by_policy, warnings_)
    if by_policy:
        warnings_.append(policy_warning(by_policy))
    plan = InitPlan(spec, layers, skipped, warnings_, operating_scale=scale, chain=chain)
    for message in warnings_:
        warn(message)  # attributed to the user's line
    return plan


def eligible_layers(model: nn.Module, spec: InitSpec) -> list[str]:
    """The qualified names of the weight layers ``plan_init(model, spec)`` plans (registration
    order), found without running the model and without a warning: what observing a model must reach.
    Raises ValueError as ``plan_init`` does for an ``include``/``exclude`` pattern that matches nothing.

    Example::

        eligible_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)), InitSpec())   # ['0', '2']
    """
    return _discover(model, spec.include_patterns, spec.exclude_patterns)[0]


def spec_of(spec: InitSpec | None, settings: dict[str, Any]) -> InitSpec:
    """``spec`` (default ``InitSpec()``) with ``settings`` applied: one validation of all of them."""
    if spec is not None and not isinstance(spec, InitSpec):
        invalid("spec", spec, "an InitSpec or None (or pass the settings as keyword arguments: scheme='he', ...)")
    if not settings:
        return spec or InitSpec()
    return (spec or InitSpec()).replace(**settings)


def _keep_shared_biases(model: nn.Module, layers: list[LayerPlan], warnings_: list[str]) -> None:
    """A bias also held by a module that the plan leaves alone is left alone too (as tied weights are)."""
    owners = _owners(model)
    planned = {name for layer in layers for name in (layer.name, *layer.shared_with)}
    for layer in layers:
        for name, module in zip((layer.name, *layer.shared_with), (layer.module, *layer.sharers)):
            if not zeroable_bias(module):
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


def _layer_plan(name: str, module: nn.Module, info: SlopeInfo, spec: InitSpec) -> LayerPlan:
    delta = spec.conv_draw == "delta" and not isinstance(module, nn.Linear) and spec.scheme != "zero"
    d_in, d_out, groups = _layer_fans(module, delta)
    layer_init = _init.resolve_validated(spec.scheme, d_in, d_out, info.slope, spec.distribution, spec.moment,
                                         _drawn_in(module, delta))
    bias = module.bias
    return LayerPlan(name, type(module).__name__, tuple(module.weight.shape), d_in, d_out, groups, info.slope,
                     info.source, layer_init, bias is not None and bias.requires_grad,
                     isinstance(module, _TRANSPOSED), taps=_delta_taps(module) if delta else None, module=module,
                     slope_found_by=info.found_by, calls=info.calls, activation=info.activation)


def _by_chain(layers: list[LayerPlan], spec: InitSpec, input_rms: float | None,
              by_policy: list[tuple[str, str, float]], warnings_: list[str]
              ) -> tuple[float | None, ChainPrediction | None]:
    """Plan the layers by the exact scale chain (:mod:`lightning_lyapunov.chain_init`) when an activation
    is not a Leaky ReLU and the scheme's draw is random; returns the operating scale and the chain's
    prediction, or ``(None, None)``.

    The operating scale is the per-unit rms of the first layer's input in the observed pass (1 without
    an example input). Where the chain cannot plan (a transposed full convolution, whose outputs each see
    a part of the drawn columns; every network dead before the output), those activations are treated by
    policy, as ``negative_slope``, and ``by_policy`` gets them (one warning says which, and why). Layers
    narrower than 8 followed by an activation whose fixed point is unstable at width 8 (GELU, SiLU, Mish,
    Hardswish; narrower, it may look stable) get a warning: there three
    cumulants per step do not describe the chain's law well (docs/theory.md, section 7, Limits).
    """
    if spec.scheme not in RANDOM_SCHEMES or not uses_chain([layer.activation for layer in layers]):
        return None, None
    scale = input_rms if input_rms is not None else 1.0
    transposed = [layer.name for layer in layers if layer.transposed and layer.taps is None]
    reason = None
    if transposed:
        reason = (f"transposed convolutions ({', '.join(map(repr, transposed[:4]))}) see part of their drawn columns, "
                  "which the scale chain does not model")
    else:
        try:
            result = chain_inits([(layer.d_in, layer.d_out, layer.activation, layer.negative_slope) for layer in layers],
                                 spec.scheme, spec.distribution, spec.moment, scale)
        except ValueError as error:
            reason = f"the scale chain failed: {first_line(error)}"
    if reason is not None:
        warnings_.append(f"the scale chain cannot plan this model ({reason}): its activations that are not Leaky "
                         "ReLUs fall back to the policy (next warning)")
        by_policy += [(layer.name, layer.slope_source.split(" (")[0], layer.negative_slope)
                      for layer in layers if layer.activation is not None and not layer.activation.homogeneous]
        return None, None
    for layer, layer_init, stability in zip(layers, result.inits, result.stability):
        layer.init, layer.stability = layer_init, stability
        layer.exact_scale = scale if layer.activation is not None and not layer.activation.homogeneous else None
    narrow = [layer for layer in layers if layer.exact_scale is not None and layer.d_out < 8
              and unstable_at_width_8(layer.activation, spec.distribution, scale)]
    if narrow:
        names = ", ".join(repr(layer.name) for layer in narrow[:4]) + (f" and {len(narrow) - 4} more" if len(narrow) > 4 else "")
        kinds = ", ".join(sorted({layer.activation.name for layer in narrow}))
        warnings_.append(
            f"layers {names} have fewer than 8 units and are followed by {kinds}, whose fixed point is unstable: the "
            "scale chain's prediction is approximate there (the spread up to 10% too small, the mean off by up to "
            "0.05 per layer at width 2; docs/theory.md, section 7, Limits)")
    return scale, result.prediction

