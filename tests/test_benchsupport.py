"""The benchmarks' shared arithmetic: figures in notes rest on it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def benchsupport() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchsupport", ROOT / "bench" / "benchsupport.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),  # the textbook values of Wilson's 95% interval
        (0, 10, 0.0, 0.2775),  # none: the interval still reaches up, unlike the normal approximation's
        (10, 10, 0.7225, 1.0),
        (18, 34, 0.3674, 0.6855),  # one SemEval seed's same-event pairs
    ],
)
def test_wilson_interval_gives_the_known_bounds(successes: int, trials: int, low: float, high: float) -> None:
    found = benchsupport().wilson_interval(successes, trials)
    assert found == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_narrows_with_more_trials_at_the_same_share() -> None:
    few, many = benchsupport().wilson_interval(17, 34), benchsupport().wilson_interval(170, 340)
    assert few[0] < many[0] < 0.5 < many[1] < few[1]
