"""benchmarks/analysis.ratio_ci and rounds.window_fidelity: the intervals `make bench` puts on every ratio and
fidelity figure (pure numpy; no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import analysis


def test_ratio_of_medians_with_round_interval() -> None:
    rng = np.random.default_rng(1)
    rounds = [r for r in range(1, 6) for _ in range(2)]
    den = list(10 + rng.normal(0, 0.1, 10))
    num = [2 * d for d in den]  # exactly 2× in every round
    ci = analysis.ratio_ci(num, rounds, den, rounds)
    assert ci is not None
    assert ci["value"] == pytest.approx(2.0)
    assert ci["ci95_low"] == pytest.approx(2.0) and ci["ci95_high"] == pytest.approx(2.0)
    assert ci["rounds"] == 5


def test_round_noise_widens_the_interval_and_it_covers_the_value() -> None:
    rng = np.random.default_rng(2)
    rounds = [r for r in range(1, 7) for _ in range(2)]
    den = list(10 + rng.normal(0, 1.0, 12))
    num = list(20 + rng.normal(0, 3.0, 12))
    ci = analysis.ratio_ci(num, rounds, den, rounds)
    assert ci is not None
    assert ci["ci95_low"] <= ci["value"] <= ci["ci95_high"]
    assert ci["ci95_high"] - ci["ci95_low"] > 0.1


def test_no_shared_round_gives_no_ratio() -> None:
    assert analysis.ratio_ci([1.0], [1], [1.0], [2]) is None


def test_window_fidelity_resamples_windows(tmp_path: Path) -> None:
    import rounds as bench_rounds

    rng = np.random.default_rng(3)
    windows = [list(rng.integers(0, 50, 9)) for _ in range(8)]
    n = sum(len(w) - 1 for w in windows)
    ref = rng.normal(size=(n, 50)).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "same.npy", ref)
    np.save(tmp_path / "noisy.npy", (ref + rng.normal(0, 2.0, ref.shape)).astype(np.float32))
    same = bench_rounds.window_fidelity(tmp_path / "ref.npy", tmp_path / "same.npy", windows)
    noisy = bench_rounds.window_fidelity(tmp_path / "ref.npy", tmp_path / "noisy.npy", windows)
    assert same["top1_agreement"]["value"] == 1.0 and same["kld_mean"]["value"] == pytest.approx(0, abs=1e-6)
    assert noisy["top1_agreement"]["value"] < 0.9
    assert noisy["top1_agreement"]["n_windows"] == 8 and noisy["top1_agreement"]["n"] == n
