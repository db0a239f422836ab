"""Tests of lightning_lyapunov.settings: InitSpec, the init settings declared and validated once."""

from __future__ import annotations

import dataclasses

import pytest

from lightning_lyapunov import InitSpec
from lightning_lyapunov.settings import DEFAULT_TARGET


def test_defaults_and_resolved_values() -> None:
    spec = InitSpec()
    assert (spec.scheme, spec.distribution, spec.calibrate, spec.calibrate_target) == ("lyapunov", "orthogonal", None, 1.0)
    assert (spec.conv_draw, spec.sampling, spec.calibration_method, spec.calibration_optional) == ("full", None, None, False)
    assert InitSpec(scheme="stiefel").conv_draw == "delta"
    assert InitSpec(conv="delta").conv_draw == "delta"
    assert InitSpec(sampled=True).sampling == "network" and InitSpec(sampled="layerwise").sampling == "layerwise"


@pytest.mark.parametrize("scheme, calibration", [("lyapunov", "layers"), ("he", None), ("fractional", None),
                                                  ("stiefel", None), ("zero", None)])
def test_auto_calibrates_lyapunov_only_and_optionally(scheme: str, calibration: str | None) -> None:
    moment = 1.0 if scheme == "fractional" else None
    spec = InitSpec(scheme=scheme, moment=moment, calibrate="auto")
    assert spec.calibration_method == calibration and spec.calibration_optional
    explicit = InitSpec(scheme=scheme, moment=moment, calibrate="output")
    assert explicit.calibration_method == "output" and not explicit.calibration_optional


@pytest.mark.parametrize("settings, match", [
    ({"scheme": "kaiming"}, r"scheme='kaiming' is invalid \(unknown scheme\)"),
    ({"distribution": "uniform"}, "distribution='uniform' is invalid"),
    ({"scheme": "fractional"}, "needs moment=s"),
    ({"scheme": "he", "moment": 1.0}, "moment=1.0 is not used by scheme='he'"),
    ({"moment": 0.5}, "scheme 'lyapunov' is the moment-0 scheme"),
    ({"negative_slope": 1.5}, "negative_slope=1.5 is invalid"),
    ({"negative_slope": {"[": 0.1}}, "is not a regular expression"),
    ({"include": {"a": 1}}, "include=.* is invalid"),
    ({"conv": "centre"}, r"conv='centre' is invalid \(unknown conv\)"),
    ({"scheme": "stiefel", "conv": "full"}, "conv='full' with scheme='stiefel'"),
    ({"sampled": "yes"}, "sampled='yes' is invalid"),
    ({"scheme": "zero", "sampled": True}, "sampled needs a random scheme"),
    ({"candidates": 3}, "candidates=3 is only used with sampled"),
    ({"sampled": True, "candidates": 0}, "candidates=0 is invalid"),
    ({"calibrate": "Auto"}, r"calibrate='Auto' is invalid .*'auto', 'layers', 'output'.*did you mean 'auto'"),
    ({"calibrate": "layers", "calibrate_target": -1.0}, "calibrate_target=-1.0 is invalid"),
    ({"calibrate_target": 0.1}, "calibrate=None calibrates nothing"),
    ({"calibrate": "layers", "stream_growth": 1.0}, "stream_growth=1.0 is invalid"),
    ({"calibrate": "output", "stream_growth": 2.0}, "stream_growth=2.0 is only used by calibrate='layers'"),
    ({"stream_growth": None}, "stream_growth=None is only used by calibrate='layers'"),
    ({"scheme": "he", "calibrate": "auto", "calibrate_target": 0.1}, "calibrate='auto' calibrates nothing for scheme='he'"),
])
def test_every_rule_is_checked_on_construction(settings: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        InitSpec(**settings)


def test_frozen_replace_validates_again_and_settings_round_trip() -> None:
    spec = InitSpec(scheme="fractional", moment=1, distribution="gaussian", negative_slope={"^0$": 0.2})
    assert spec.moment == 1.0 and isinstance(spec.moment, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.scheme = "he"  # type: ignore[misc]
    with pytest.raises(ValueError, match="moment=1.0 is not used by scheme='he'"):
        spec.replace(scheme="he")
    assert InitSpec(**spec.settings()) == spec
    assert spec.slope_for("0") == 0.2 and spec.slope_for("1") is None
    assert [p.pattern for p in spec.slope_patterns] == ["^0$"]
    assert str(spec) == "scheme='fractional', distribution='gaussian', moment=1.0, negative_slope={'^0$': 0.2}"


def test_one_default_target() -> None:
    assert InitSpec().calibrate_target == DEFAULT_TARGET == 1.0
