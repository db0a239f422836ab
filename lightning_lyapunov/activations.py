"""Which activation follows each weight layer: torch.fx tracing, with a module-order fallback.

The schemes need the slope ``a`` of the Leaky ReLU that acts on each layer's output
(``y = phi(W x)``, docs/theory.md, section 3). This module finds it.

**Tracing.** ``torch.fx.symbolic_trace(model)``; from each weight layer's node the graph is walked
forward through operations that do not change which activation acts on the units, up to the first
activation on every path:

* exact: ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu`` (slope 0); ``nn.LeakyReLU``,
  ``F.leaky_relu`` (their ``negative_slope``); ``nn.PReLU`` at its current slope (a per-channel
  PReLU uses the mean slope, with a warning). Slopes enter the theory only through ``a**2``, so a
  negative slope ``a`` is used as ``|a|``; ``|a| > 1`` is clipped to 1 with a warning.
* walked through (shape-only or per-unit affine): Dropout, Identity, Flatten/Unflatten, view,
  reshape, flatten, permute, transpose, squeeze/unsqueeze, contiguous, getitem, cat, dtype casts,
  multiplication or division by a constant, padding, upsampling, pixel/channel shuffles,
  pooling (max pooling commutes with monotone activations, average pooling is linear), and the
  normalization layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm): the activation after a
  norm is still the one acting on the layer's units, but note that a norm layer re-scales the
  signal, so the predicted drift does not describe a normalized network.
* residual additions (``+``, ``torch.add``, ``Tensor.add``): walked through; the slope is the one
  of the activation applied to the sum, and the plan warns that the per-layer theory assumes a
  plain chain (the predicted drift and spread do not describe residual paths).
* the graph output, or the next weight layer, with no activation in between: slope 1 (linear).
* Softmax / LogSoftmax / Softmin: an output head, slope 1 (no warning: the layer is the last one).
* exact by the scale chain (:mod:`lightning_lyapunov.chain_theory`, docs/theory.md section 7): GELU
  (both forms), SiLU, Mish, ELU, CELU, SELU, Softplus, ReLU6, Hardswish, Tanh, Hardtanh, Softsign,
  Sigmoid, Hardsigmoid, modules or functions, with their parameters (``SlopeInfo.activation``). Their
  ``slope`` is the Leaky-ReLU slope the slope-based baselines (He, orthogonal) use: 0 for the first
  nine (they vanish, or nearly, on the negative side), 1 for the saturating ones (linear near 0).
* policy, always with a warning naming the layer: RReLU at its mean slope ``(lower + upper) / 2``
  (its slope is random while training), a functional activation whose parameters are tensors (traced,
  not numbers), and any other operation, treated as linear (slope 1). Override with ``negative_slope=``,
  or make an activation module of your own exact with :func:`register_activation`.

**Fallback.** When the model does not trace (data-dependent control flow, unsupported ops), the
modules are read in registration order: the first activation module registered after a weight
layer and before the next weight layer gives its slope (none: slope 1), with one warning.
Functional activations (``F.relu`` in ``forward``) are invisible to the fallback.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import chain_theory

__all__ = [
    "SlopeInfo", "detect_slopes", "module_slope", "classify_call", "merge_findings", "complete_slopes",
    "register_activation",
    "WEIGHT_LAYERS", "ACTIVATION_MODULES",
]

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

_RELU_LIKE_MODULES = (nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.ReLU6, nn.Hardswish)
_LINEAR_LIKE_MODULES = (nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Sigmoid, nn.Hardsigmoid)
_OUTPUT_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
_EXACT_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    _EXACT_MODULES + (nn.RReLU,) + _RELU_LIKE_MODULES + _LINEAR_LIKE_MODULES + _OUTPUT_MODULES
)
_PASS_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)

_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_}
_LEAKY_FUNCTIONS = {F.leaky_relu, F.leaky_relu_}
_RELU_LIKE_FUNCTIONS = {
    F.gelu: "GELU",
    F.silu: "SiLU",
    F.mish: "Mish",
    F.elu: "ELU",
    F.celu: "CELU",
    F.selu: "SELU",
    F.softplus: "Softplus",
    F.relu6: "ReLU6",
    F.hardswish: "Hardswish",
}
_LINEAR_LIKE_FUNCTIONS = {
    torch.tanh: "Tanh",
    F.tanh: "Tanh",
    F.hardtanh: "Hardtanh",
    F.softsign: "Softsign",
    torch.sigmoid: "Sigmoid",
    F.sigmoid: "Sigmoid",
    F.hardsigmoid: "Hardsigmoid",
}
_OUTPUT_FUNCTIONS = {F.softmax: "Softmax", F.log_softmax: "LogSoftmax", torch.softmax: "Softmax",
                     torch.log_softmax: "LogSoftmax", F.softmin: "Softmin", F.cross_entropy: "cross_entropy",
                     F.mse_loss: "mse_loss", F.l1_loss: "l1_loss", F.nll_loss: "nll_loss",
                     F.smooth_l1_loss: "smooth_l1_loss", F.huber_loss: "huber_loss",
                     F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits"}
# the next operation is a linear map of the layer's output: no activation in between (slope 1)
_LINEAR_MAP_FUNCTIONS = {
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
    F.conv_transpose3d, torch.matmul, torch.mm, torch.bmm, torch.einsum, F.scaled_dot_product_attention,
    F.multi_head_attention_forward,
}
_PASS_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
    torch.cat, torch.concat, torch.stack, operator.getitem, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.pad, F.interpolate, F.pixel_shuffle, F.pixel_unshuffle,
    torch.chunk, torch.split, torch.narrow, torch.select, torch.unbind, torch.movedim, torch.flip,
    torch.roll, torch.clone,
} | {  # what F.max_pool2d(..., return_indices=...) and friends dispatch to
    getattr(F, f"{prefix}max_pool{n}d{suffix}")
    for prefix in ("", "adaptive_") for n in (1, 2, 3) for suffix in ("_with_indices",)
    if hasattr(F, f"{prefix}max_pool{n}d{suffix}")
} | {
    getattr(F, f"_{prefix}max_pool{n}d") for prefix in ("", "adaptive_") for n in (1, 2, 3)
    if hasattr(F, f"_{prefix}max_pool{n}d")
}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_SCALE_FUNCTIONS = {operator.mul, operator.truediv, operator.imul, operator.itruediv, torch.mul, torch.div}
_RELU_METHODS = {"relu", "relu_"}
_LINEAR_LIKE_METHODS = {"tanh": "Tanh", "tanh_": "Tanh", "sigmoid": "Sigmoid", "sigmoid_": "Sigmoid"}
_OUTPUT_METHODS = {"softmax": "Softmax", "log_softmax": "LogSoftmax"}
_LINEAR_MAP_METHODS = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm"}
_PASS_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous",
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "clone", "view_as", "reshape_as",
    "detach", "copy_", "expand", "expand_as", "repeat", "chunk", "split", "narrow", "select", "unbind", "unflatten",
    "movedim", "flip", "roll", "__getitem__", "T", "mT", "data", "transpose_", "squeeze_", "unsqueeze_",
    "cpu", "cuda", "mean", "sum", "amax", "amin", "max", "min",  # pooling over positions; whole-batch reductions are ignored
}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__", "__rsub__"}
_SCALE_METHODS = {"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__", "__itruediv__"}
_IGNORED_METHODS = {
    "size", "dim", "numel", "shape", "__len__", "dtype", "device", "is_cuda", "ndim", "stride", "data_ptr",
    "is_contiguous", "is_floating_point", "item", "tolist", "__bool__", "__format__", "__repr__", "requires_grad",
    "grad", "grad_fn", "is_nested", "is_sparse", "layout", "names", "storage_offset", "element_size",
    "eq", "ne", "gt", "lt", "ge", "le", "__eq__", "__ne__", "__gt__", "__lt__", "__ge__", "__le__",
    "any", "all", "isfinite", "isnan", "isinf", "argmax", "argmin", "new_zeros", "new_ones", "new_empty",
    "new_full", "new_tensor", "numpy", "__hash__", "__setitem__",
}


@dataclass(frozen=True)
class SlopeInfo:
    """The activation slope found for one weight layer, where it came from, and any warning.

    ``source`` says what was found (``"fx"``, ``"observed"``, ``"GELU (observed)"``,
    ``"policy:RReLU"``, ``"no activation"``, ...), ``found_by`` how: ``"observed"`` (one real forward
    pass), ``"fx"``, ``"module order"`` or ``"override"``; ``calls`` is how often the layer ran in the
    observed pass. ``activation``: for an activation that is not a Leaky ReLU but that the scale chain
    treats exactly, its :class:`~lightning_lyapunov.chain_theory.Activation` (``slope`` is then the
    Leaky-ReLU slope the slope-based baselines use); ``input_rms``: the per-unit root-mean-square of
    the layer's input in the observed pass (the plan's operating scale, for the first layer).
    """

    slope: float
    source: str
    warning: str | None = None
    residual: bool = False
    found_by: str = "fx"
    calls: int | None = None
    policy: str | None = None  # the kind of activation treated by policy (its warning is policy_warning's)
    activation: chain_theory.Activation | None = None  # a non-Leaky activation the scale chain treats exactly
    input_rms: float | None = None  # the per-unit rms of the layer's input in the observed pass (first call)


def _exact(slope: float, source: str, what: str, layer: str) -> SlopeInfo:
    """Slope of a Leaky-ReLU-type activation: ``|a|`` (the theory sees ``a**2``), clipped to 1."""
    a = abs(float(slope))
    if a > 1.0:
        return SlopeInfo(1.0, source, f"layer {layer!r}: {what} has |slope| {a:g} > 1, clipped to 1")
    return SlopeInfo(a, source)


def _policy(kind: str, slope: float, layer: str, source: str) -> SlopeInfo:
    message = policy_warning([(layer, kind, slope)])
    return SlopeInfo(slope, f"policy:{kind}" + ("" if source == "fx" else f" ({source})"), message, policy=kind)


#: the parameters of the activations the scale chain treats exactly, as torch names them (in order)
_THEORY_PARAMS: dict[str, tuple[str, ...]] = {
    "GELU": ("approximate",), "ELU": ("alpha",), "CELU": ("alpha",), "Softplus": ("beta", "threshold"),
    "Hardtanh": ("min_val", "max_val"),
}


def _by_theory(kind: str, slope: float, layer: str, source: str, params: Mapping[str, Any]) -> SlopeInfo:
    """An activation the scale chain treats exactly (``kind`` with torch's ``params``); a parameter that
    is not a plain number or string (a traced tensor) leaves it to the policy."""
    wanted = {key: value for key, value in params.items() if key in _THEORY_PARAMS.get(kind, ())}
    if not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in wanted.values()):
        return _policy(f"{kind} with traced parameters", slope, layer, source)
    try:
        act = chain_theory.activation(kind, **wanted)
    except ValueError:  # a parameter the theory refuses (CELU alpha=0): the policy, with its warning
        return _policy(f"{kind}({', '.join(f'{k}={v!r}' for k, v in wanted.items())})", slope, layer, source)
    return SlopeInfo(slope, kind + ("" if source == "fx" else f" ({source})"), activation=act)


def _call_params(kind: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """torch's parameters of a functional activation call ``F.elu(x, 0.5)`` (positional after ``x``)."""
    names = _THEORY_PARAMS.get(kind, ())
    params = dict(zip(names, args[1:]))
    params.update({key: kwargs[key] for key in names if key in kwargs})
    return params


def _meaning(slope: float) -> str:
    return "ReLU (slope 0)" if slope == 0.0 else "linear (slope 1)" if slope == 1.0 else f"slope {slope:g}"


def policy_warning(found: Sequence[tuple[str, str, float]]) -> str:
    """One warning for every layer followed by something that is not a Leaky ReLU, treated by policy:
    ``found`` lists ``(layer, kind, slope)`` (``kind``: the activation or operation, e.g. ``"GELU"``).

    Example::

        policy_warning([("fc1", "GELU", 0.0), ("fc2", "SiLU", 0.0)])
        # "layers 'fc1', 'fc2' are followed by activations that are not Leaky ReLUs, treated by policy as
        #  ReLU (slope 0): GELU after 'fc1'; SiLU after 'fc2'. Override with negative_slope={regex: slope}, ..."
    """
    if len(found) == 1:
        layer, kind, slope = found[0]
        return (f"layer {layer!r} is followed by {kind}, which is not a Leaky ReLU: treated as {_meaning(slope)} by "
                f"policy; pass negative_slope={{{layer!r}: ...}} to override")
    by_slope: dict[float, dict[str, list[str]]] = {}
    for layer, kind, slope in found:
        by_slope.setdefault(slope, {}).setdefault(kind, []).append(layer)
    parts = []
    for slope, kinds in by_slope.items():
        after = "; ".join(f"{kind} after {_listed(layers)}" for kind, layers in kinds.items())
        parts.append(f"as {_meaning(slope)}: {after}")
    layers = [layer for layer, _, _ in found]
    example = "|".join(re.escape(layer) for layer in layers[:2])
    return (f"{len(layers)} layers are followed by activations that are not Leaky ReLUs, treated by policy "
            + "; and ".join(parts) + f". Override with negative_slope={{regex: slope}}, e.g. negative_slope={{'^({example})$': ...}}")


def _listed(layers: Sequence[str], shown: int = 6) -> str:
    text = ", ".join(repr(layer) for layer in layers[:shown])
    return text + (f" and {len(layers) - shown} more" if len(layers) > shown else "")


_REGISTERED: dict[type[nn.Module], tuple[chain_theory.Activation, float]] = {}


def register_activation(
    module_type: type[nn.Module],
    activation: chain_theory.Activation | str | Callable[[Any], Any],
    negative_slope: float = 0.0,
) -> chain_theory.Activation:
    """Tell the plan what an activation module class of yours computes, so that it is exact too.

    ``activation``: what :func:`lightning_lyapunov.chain_theory.activation` takes: a built-in name, an
    :class:`~lightning_lyapunov.chain_theory.Activation`, or your own vectorized **numpy** function
    (``np.ndarray -> np.ndarray``, elementwise; it is checked on ``[-50, 50]``). ``negative_slope``: the
    Leaky-ReLU slope the slope-based baselines (He, orthogonal) use for it. Every instance of
    ``module_type`` (and of its subclasses) is then an activation: torch.fx treats it as a leaf, the
    observed pass does not look inside it, and the scale chain plans the layers before it. Without
    registering, the operations inside your module are followed one by one (``x * torch.sigmoid(x)``
    would be seen as a sigmoid). Returns the :class:`~lightning_lyapunov.chain_theory.Activation`.
    Raises ValueError for a function the theory cannot use (not elementwise, not finite), naming why.

    Example::

        class Swish(nn.Module):
            def forward(self, x):
                return x * torch.sigmoid(x)

        register_activation(Swish, lambda x: x / (1.0 + np.exp(-x)))   # or simply register_activation(Swish, "silu")
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type={module_type!r} is invalid: it must be an nn.Module subclass (the class, "
                        "not an instance)")
    if issubclass(module_type, WEIGHT_LAYERS):
        raise ValueError(f"module_type={module_type.__name__} is a weight layer, not an activation")
    slope = float(negative_slope)
    if not 0.0 <= slope <= 1.0:
        raise ValueError(f"negative_slope={negative_slope!r} is invalid: it must be in [0, 1]")
    if callable(activation) and not isinstance(activation, chain_theory.Activation):
        act = chain_theory.activation(activation, name=module_type.__name__)
    else:
        act = chain_theory.activation(activation)
    _REGISTERED[module_type] = (act, slope)
    return act


def _registered(module: nn.Module, source: str) -> SlopeInfo | None:
    for kind, (act, slope) in _REGISTERED.items():
        if isinstance(module, kind):
            where = kind.__name__ + ("" if source == "fx" else f" ({source})")
            if act.homogeneous:  # a Leaky ReLU: the closed forms
                return SlopeInfo(act.homogeneous_slope, where)
            return SlopeInfo(slope, where, activation=act)
    return None


def module_slope(module: nn.Module, layer: str, source: str) -> SlopeInfo | None:
    """Slope implied by an activation module, or None if ``module`` is not an activation.

    ReLU: 0; LeakyReLU: ``|negative_slope|``; PReLU: ``|weight|`` (per-channel: the mean, with a
    warning); RReLU: ``(lower + upper) / 2``; the activations the scale chain treats exactly carry their
    ``activation`` (module docstring).
    """
    registered = _registered(module, source)
    if registered is not None:
        return registered
    if isinstance(module, nn.ReLU):
        return SlopeInfo(0.0, source)
    if isinstance(module, nn.LeakyReLU):
        return _exact(module.negative_slope, source, "LeakyReLU", layer)
    if isinstance(module, nn.PReLU):
        weight = module.weight.detach().float()
        info = _exact(weight.mean().item(), source, "PReLU", layer)
        if weight.numel() > 1:
            message = (f"layer {layer!r} is followed by a per-channel PReLU ({weight.numel()} slopes): "
                       f"using the mean slope {info.slope:g}")
            return SlopeInfo(info.slope, source, message)
        return info
    if isinstance(module, nn.RReLU):
        return _policy("RReLU", (module.lower + module.upper) / 2, layer, source)
    for table, slope in ((_RELU_LIKE_MODULES, 0.0), (_LINEAR_LIKE_MODULES, 1.0)):
        if isinstance(module, table):
            kind = type(module).__name__ if type(module) in table else next(t.__name__ for t in table if isinstance(module, t))
            params = {key: getattr(module, key, None) for key in _THEORY_PARAMS.get(kind, ())}
            return _by_theory(kind, slope, layer, source, params)
    if isinstance(module, _OUTPUT_MODULES):
        return SlopeInfo(1.0, f"no activation ({type(module).__name__})")
    return None


def is_pass_module(module: nn.Module) -> bool:
    """Whether ``module`` leaves the activation acting on its input's units unchanged (norms, pooling, ...)."""
    return isinstance(module, _PASS_MODULES)


def _leaky_slope(args: Sequence[Any], kwargs: Mapping[str, Any], layer: str, source: str) -> SlopeInfo:
    slope: Any = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
    if not isinstance(slope, (int, float)):
        return _policy("leaky_relu with a traced slope", 0.0, layer, source)
    return _exact(slope, source, "leaky_relu", layer)


def classify_call(
    target: Callable[..., Any] | str, args: Sequence[Any], kwargs: Mapping[str, Any], layer: str, source: str
) -> tuple[str, SlopeInfo | None]:
    """What a call on (a tensor derived from) ``layer``'s output means for that layer's slope.

    ``target`` is a function, or a ``Tensor`` method or attribute name. Returns one of
    ``("act", info)`` (an activation), ``("stop", info)`` (an output head, a loss or a linear map: no
    activation, slope 1), ``("pass", None)``, ``("add", None)`` (a sum: walked through), ``("scale",
    None)`` (multiplication or division: walked through when the other operand is a constant),
    ``("ignore", None)`` (shape queries, comparisons) or ``("unknown", info)`` (treated as linear,
    with a warning). Shared by the fx walk and the observed forward pass, so that an activation kind
    gets one slope whichever way it was found.
    """
    linear = SlopeInfo(1.0, "no activation" + ("" if source == "fx" else f" ({source})"))
    if isinstance(target, str):
        if target in _RELU_METHODS:
            return "act", SlopeInfo(0.0, source)
        if target in _LINEAR_LIKE_METHODS:
            return "act", _by_theory(_LINEAR_LIKE_METHODS[target], 1.0, layer, source, {})
        if target in _OUTPUT_METHODS:
            return "act", SlopeInfo(1.0, f"no activation ({_OUTPUT_METHODS[target]})")
        if target in _LINEAR_MAP_METHODS:
            return "stop", linear
        for table, verdict in ((_PASS_METHODS, "pass"), (_ADD_METHODS, "add"), (_SCALE_METHODS, "scale"),
                               (_IGNORED_METHODS, "ignore")):
            if target in table:
                return verdict, None
        kind = target if target.startswith("<") else f"Tensor.{target}"
    else:
        if target in _RELU_FUNCTIONS:
            return "act", SlopeInfo(0.0, source)
        if target in _LEAKY_FUNCTIONS:
            return "act", _leaky_slope(args, kwargs, layer, source)
        for table, slope in ((_RELU_LIKE_FUNCTIONS, 0.0), (_LINEAR_LIKE_FUNCTIONS, 1.0)):
            if target in table:
                kind = table[target]
                return "act", _by_theory(kind, slope, layer, source, _call_params(kind, args, kwargs))
        if target in _OUTPUT_FUNCTIONS:
            return "act", SlopeInfo(1.0, f"no activation ({_OUTPUT_FUNCTIONS[target]})")
        if target in _LINEAR_MAP_FUNCTIONS:
            return "stop", linear
        for table, verdict in ((_PASS_FUNCTIONS, "pass"), (_ADD_FUNCTIONS, "add"), (_SCALE_FUNCTIONS, "scale")):
            if target in table:
                return verdict, None
        kind = getattr(target, "__name__", str(target))
    return "unknown", _policy(kind, 1.0, layer, source)


def _classify(node: fx.Node, modules: dict[str, nn.Module], layer: str) -> tuple[str, SlopeInfo | None]:
    """One of ("act", info), ("pass", None), ("add", None), ("stop", info), ("ignore", None)."""
    linear = SlopeInfo(1.0, "no activation")
    if node.op == "output":
        return "stop", linear
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, WEIGHT_LAYERS):
            return "stop", linear
        info = module_slope(module, layer, "fx")
        if info is not None:
            return "act", info
        if isinstance(module, _PASS_MODULES):
            return "pass", None
        return "stop", _policy(type(module).__name__, 1.0, layer, "fx")
    if node.op not in ("call_function", "call_method"):
        return "ignore", None
    target = str(node.target) if node.op == "call_method" else node.target
    verdict, info = classify_call(target, node.args, node.kwargs, layer, "fx")
    if verdict == "scale":
        if _has_constant(node):
            return "pass", None
        verdict, info = classify_call("<product of two tensors>", (), {}, layer, "fx")
    return ("stop" if verdict == "unknown" else verdict), info


def _has_constant(node: fx.Node) -> bool:
    return any(isinstance(arg, (int, float)) for arg in node.args)


def merge_findings(layer: str, found: list[SlopeInfo], residual: bool = False, what: str = "feeds") -> SlopeInfo:
    """One slope from every activation found after ``layer`` (first one wins; different slopes warn).

    The warning names the layer, the slopes seen and the fix (``negative_slope={regex: slope}``).
    """
    if not found:
        return SlopeInfo(1.0, "no activation", residual=residual)
    first = found[0]
    distinct = sorted({(f.slope, f.source) for f in found})
    warning = first.warning
    if len({(f.slope, f.activation) for f in found}) > 1:
        listed = ", ".join(f"{s:g} ({src})" for s, src in distinct)
        differ = "activations with different slopes" if len({f.slope for f in found}) > 1 else "different activations"
        warning = (
            f"layer {layer!r} {what} several {differ} [{listed}]: using the first, "
            f"{first.slope:g} ({first.source}); one layer gets one scale: choose with negative_slope={{'^{re.escape(layer)}$': <slope>}}"
        )
    return SlopeInfo(first.slope, first.source, warning, residual,
                     policy=first.policy if warning is first.warning else None, activation=first.activation)


def _follow(start: fx.Node, modules: dict[str, nn.Module], layer: str) -> SlopeInfo:
    """Breadth-first walk from a layer's node to the activations that act on its output."""
    frontier, seen, found, residual = list(start.users), set(), [], False
    while frontier:
        node = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        verdict, info = _classify(node, modules, layer)
        if verdict in ("pass", "add"):
            residual = residual or verdict == "add"
            frontier.extend(node.users)
        elif info is not None:
            found.append(info)
    return merge_findings(layer, found, residual)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the activation classes of :func:`register_activation` as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, tuple(_REGISTERED)) or super().is_leaf_module(m, module_qualified_name)


def _trace_slopes(model: nn.Module, names: Iterable[str]) -> tuple[dict[str, SlopeInfo], list[str]]:
    """Slopes of the named layers from the fx graph, and the layers in graph (forward) order."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    wanted, slopes, order = set(names), {}, []
    for node in graph.nodes:
        target = str(node.target)
        if node.op == "call_module" and target in wanted and target not in slopes:
            slopes[target] = _follow(node, modules, target)
            order.append(target)
    return slopes, order


def _module_order_slopes(model: nn.Module, names: list[str]) -> dict[str, SlopeInfo]:
    """Fallback: the first activation module registered after each layer, before the next layer."""
    slopes, current = {}, None
    wanted = set(names)
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            current = name if name in wanted else None
            if current is not None:
                slopes[current] = SlopeInfo(1.0, "module order (no activation)", found_by="module order")
            continue
        if current is not None:
            info = module_slope(module, current, "module order")
            if info is not None:
                slopes[current] = replace(info, found_by="module order")
                current = None
    return slopes


def complete_slopes(
    model: nn.Module, names: list[str], slopes: dict[str, SlopeInfo], order: list[str], reason: str
) -> tuple[dict[str, SlopeInfo], list[str], list[str]]:
    """Fill the layers without a slope from module registration order; the model-level warnings.

    One warning names every layer guessed from registration order, why (``reason``), and the fix
    (``example_input=``); another names the layers whose output is summed with another path.
    """
    warnings_: list[str] = []
    missing = [name for name in names if name not in slopes]
    if missing:
        fallback = _module_order_slopes(model, names)
        shown = ", ".join(repr(n) for n in missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        warnings_.append(
            f"slopes of {len(missing)} layer{'s' if len(missing) > 1 else ''} ({shown}) guessed from module "
            f"registration order: {reason}. Functional activations (F.relu in forward) are invisible there: pass "
            "example_input= (a batch the model's forward takes) so that one forward pass is observed, or "
            "negative_slope={regex: slope}"
        )
        slopes = {**slopes, **{name: fallback[name] for name in missing}}
        order = order + missing
    residual = [name for name in order if slopes[name].residual]
    if residual:
        warnings_.append(
            f"residual additions after layers {residual}: their slope is that of the activation applied to the "
            "sum; the predicted drift and spread assume a plain chain and do not describe residual paths"
        )
    return slopes, order, warnings_


def first_line(error: BaseException) -> str:
    """The first line of an error's message, whole (a cut mid-word hides what went wrong)."""
    return (str(error).strip().splitlines() or [""])[0]


def detect_slopes(
    model: nn.Module, names: list[str], *, tracer: Callable[..., Any] | None = None
) -> tuple[dict[str, SlopeInfo], list[str], list[str]]:
    """Slope of the activation after each named weight layer, by torch.fx tracing (no example input).

    Returns ``(slopes, order, warnings)``: a :class:`SlopeInfo` per name (with its own per-layer
    warning, if any), the names in forward order (fx graph order; registration order when tracing
    fails, and layers the graph never calls go last, planned by registration order), and the
    model-level warnings (tracing failure, uncalled layers, residual additions). With an example
    input, :func:`lightning_lyapunov.observe.find_slopes` observes a real forward pass instead.

    Example::

        slopes, order, warnings = detect_slopes(model, ["0", "2"])
        slopes["0"].slope  # 0.1 for nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 1))
    """
    try:
        slopes, order = _trace_slopes(model, names)
        reason = "they are never called in the traced forward()"
    except Exception as error:  # noqa: BLE001 - any tracing failure means: use the fallback
        reason = f"torch.fx could not trace {type(model).__name__} ({type(error).__name__}: {first_line(error)})"
        slopes, order = {}, []
    return complete_slopes(model, names, slopes, order, reason)
