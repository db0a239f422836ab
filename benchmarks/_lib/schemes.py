"""The initializations the benchmarks compare, one label each.

Every scheme goes through the package (``apply_init``, ``sample_lyapunov_``, the callback's default
calibration) except the peer, LSUV (the ``lsuv`` package, the ``benchmarks`` extra). A scheme draws
from ``torch.Generator().manual_seed(seed)`` for the run's seed; :func:`init_modules` builds and
initializes one module per seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks._lib.package import apply_init, default_calibration, sample_lyapunov_


@dataclass(frozen=True)
class Scheme:
    """One initialization as the benchmarks name it.

    ``scheme``/``distribution``/``moment`` (and ``conv`` when given) go to ``apply_init``
    (``distribution`` matters only for ``lyapunov`` and ``fractional``); ``sampled``: None,
    ``"network"`` (``sample_lyapunov_``, best of K whole networks) or ``"layerwise"``.
    """

    label: str
    scheme: str
    distribution: str = "orthogonal"
    moment: float | None = None
    sampled: str | None = None
    conv: str | None = None

    @property
    def lyapunov(self) -> bool:
        """Whether this is one of the Lyapunov variants (plain, sampled, calibrated)."""
        return self.scheme == "lyapunov"

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        """Initialize ``model`` in place, drawing from ``seed``; sampled schemes select on ``probe``.
        The plans' warnings (e.g. no activation after the last layer) are expected and silenced."""
        generator = torch.Generator().manual_seed(seed)
        kwargs = {"scheme": self.scheme, "distribution": self.distribution, "moment": self.moment}
        if self.conv is not None:
            kwargs["conv"] = self.conv
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.sampled is None:
                apply_init(model, generator=generator, **kwargs)
            else:
                if probe is None:
                    raise ValueError(f"{self.label} selects on a data batch: pass probe=<a batch of inputs>")
                sample_lyapunov_(model, probe, layerwise=self.sampled == "layerwise", generator=generator, **kwargs)


@dataclass(frozen=True)
class LSUV:
    """The LSUV peer (Mishkin & Matas 2016, package ``lsuv`` 0.3.0): orthogonal init, then each layer
    rescaled in turn until its output has unit variance on one data batch. Draws from the global
    torch RNG, seeded with the run's seed."""

    label: str = "lsuv"
    lyapunov: bool = False

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        import lsuv

        if probe is None:
            raise ValueError("LSUV needs a data batch: pass probe=<a batch of inputs>.")
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lsuv.lsuv_with_singlebatch(model, probe, verbose=False)


@dataclass(frozen=True)
class Calibrated:
    """Lyapunov orthogonal, then a calibration on a data batch (``example_input=probe``): by default
    the project's default init, ``LyapunovInit()``'s (:func:`default_calibration`)."""

    label: str = "lyapunov-calibrated"
    calibrate: str | None = None  # None: the callback's default
    target: float | None = None
    sampled: bool = False
    lyapunov: bool = True

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        if probe is None:
            raise ValueError("a calibrated init needs a data batch: pass probe=<a batch of inputs>.")
        method, target = default_calibration()
        method, target = self.calibrate or method, target if self.target is None else self.target
        generator = torch.Generator().manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_init(model, scheme="lyapunov", distribution="orthogonal", sampled=self.sampled, calibrate=method,
                       calibrate_target=target, example_input=probe, generator=generator)


HE = Scheme("he", "he")
GLOROT = Scheme("glorot", "glorot")
ORTHOGONAL = Scheme("orthogonal", "orthogonal")
LYAPUNOV_GAUSS = Scheme("lyapunov-gauss", "lyapunov", "gaussian")
LYAPUNOV_ORTH = Scheme("lyapunov-orth", "lyapunov", "orthogonal")
FRACTIONAL_1 = Scheme("fractional s=1", "fractional", "gaussian", 1.0)
STIEFEL = Scheme("stiefel", "stiefel")
ZERO = Scheme("zero", "zero")
#: the eight data-free schemes of the classification benchmarks
ALL_SCHEMES: tuple[Scheme, ...] = (HE, GLOROT, ORTHOGONAL, LYAPUNOV_GAUSS, LYAPUNOV_ORTH, FRACTIONAL_1, STIEFEL, ZERO)
#: the schemes of the deep narrow regression and score benchmarks (sampled variants, no ZerO)
DEEP_NARROW: tuple[Scheme, ...] = (
    HE, GLOROT, ORTHOGONAL, LYAPUNOV_GAUSS, LYAPUNOV_ORTH,
    Scheme("sampled lyapunov-gauss", "lyapunov", "gaussian", sampled="network"),
    Scheme("sampled lyapunov-orth", "lyapunov", "orthogonal", sampled="network"),
    Scheme("layerwise lyapunov-gauss", "lyapunov", "gaussian", sampled="layerwise"),
    Scheme("layerwise lyapunov-orth", "lyapunov", "orthogonal", sampled="layerwise"),
    FRACTIONAL_1, STIEFEL,
)


def with_data_driven(include: Sequence[str] | None = None) -> list:
    """Every data-free scheme (:data:`ALL_SCHEMES`), LSUV and the calibrated default init; ``include``:
    only those labels, in this order."""
    out: list = [*ALL_SCHEMES, LSUV(), Calibrated()]
    if include is not None:
        by_label = {s.label: s for s in out}
        out = [by_label[label] for label in include]
    return out


CALIBRATION_TEXT = {"layers": "each layer's output to root-mean-square 1 in forward order, the last one's to the target",
                    "output": "one factor spread over all layers so that the output's root-mean-square is the target"}


def scheme_note() -> str:
    """A setup sentence on :func:`with_data_driven`'s schemes."""
    method, target = default_calibration()
    return ("Schemes: " + ", ".join(f"`{s.label}`" for s in ALL_SCHEMES) + " through the project's `apply_init` "
            "(`lyapunov-*`: moment 0, Gaussian / Haar orthogonal; `stiefel` is our reconstruction), "
            "`lsuv` (package `lsuv` 0.3.0: orthogonal, then layer-wise rescaling to unit output variance on one "
            "training batch) as the data-driven peer, and `lyapunov-calibrated`: the project's default init "
            f"(`LyapunovInit()`): Lyapunov orthogonal, then `calibrate=\"{method}\"` with "
            f"`calibrate_target={target:g}` on the first 256 training inputs (" + CALIBRATION_TEXT[method] + ").")


RELU_NOTE = ("These nets use plain ReLU (negative slope 0), outside the setting of the Lyapunov paper, which treats "
             "Leaky ReLU; the package applies its formulas at slope 0, so what is judged here is that extension, "
             "not the paper's claims.")


def init_modules(build: Callable[[], nn.Module], scheme, seeds: Sequence[int], probe: Tensor | None = None
                 ) -> list[nn.Module]:
    """One freshly built module per seed (the global RNG seeded with the seed first), initialized by
    ``scheme`` with that seed (``probe``: the data batch of LSUV, calibrated and sampled schemes)."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        scheme.apply(model, seed, probe)
        out.append(model)
    return out


def at_init(build: Callable[[], nn.Module], measure: Callable[[nn.Module], object], seeds: Sequence[int],
            schemes: Sequence = ALL_SCHEMES) -> dict[str, list]:
    """Per scheme label and seed: ``measure`` a freshly built net initialized by the scheme with that seed."""
    out: dict[str, list] = {}
    for scheme in schemes:
        out[scheme.label] = []
        for seed in seeds:
            model = build()
            scheme.apply(model, seed)
            out[scheme.label].append(measure(model))
    return out


def non_finite(modules: Sequence[nn.Module]) -> int:
    """How many of the modules have an inf/NaN parameter (``lsuv`` 0.3.0 leaves them when a layer's
    output is all zero on its batch)."""
    return sum(not all(bool(p.isfinite().all()) for p in m.parameters()) for m in modules)
