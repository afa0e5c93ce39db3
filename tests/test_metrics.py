"""Tests for spared.metrics against scipy/sklearn references computed gene by gene and spot by spot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from spared import metrics


def _reference(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Plain-loop reference: scipy pearsonr and sklearn r2_score per gene and per spot."""
    out: dict[str, float] = {}
    for label, yt, yp, m in (("Gene", y_true, y_pred, mask), ("Patch", y_true.T, y_pred.T, mask.T)):
        pccs, r2s = [], []
        for j in range(yt.shape[1]):
            t, p = yt[m[:, j], j], yp[m[:, j], j]
            if len(t) < 2 or np.all(t == t[0]):
                continue
            r2s.append(r2_score(t, p))
            if not np.all(p == p[0]):
                pccs.append(pearsonr(t, p)[0])
        out[f"PCC-{label}"] = float(np.mean(pccs))
        out[f"R2-{label}"] = float(np.mean(r2s))
        out[f"n_{'genes' if label == 'Gene' else 'spots'}_scored"] = float(len(r2s))
    err = y_true[mask] - y_pred[mask]
    out["MSE"] = float(np.mean(err**2))
    out["MAE"] = float(np.mean(np.abs(err)))
    return out


def _data(seed: int = 0, n: int = 60, g: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.normal(2.0, 1.0, (n, g))
    y_pred = 0.6 * y_true + rng.normal(0.0, 0.8, (n, g))
    mask = rng.random((n, g)) < 0.6
    return y_true, y_pred, mask


def test_compute_matches_scipy_sklearn_with_random_mask() -> None:
    y_true, y_pred, mask = _data()
    mask[:, 0] = False  # a gene with no scored entries
    mask[:, 1] = False
    mask[3, 1] = True  # a gene with a single scored entry
    mask[5, :] = False  # a spot with no scored entries
    y_pred[:, 2] = 7.0  # constant prediction: no PCC for that gene, R2 still defined
    y_true[mask[:, 3], 3] = 1.5  # constant truth on its masked spots: gene excluded
    y_true[~mask[:, 3], 3] = np.nan  # NaN outside the mask is ignored
    got = metrics.compute(y_true, y_pred, mask)
    ref = _reference(np.nan_to_num(y_true), y_pred, mask)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    n, g = y_true.shape
    assert got["n_genes_scored"] == g - 3 and got["n_genes_excluded"] == 3
    assert got["n_spots_excluded"] == n - got["n_spots_scored"] >= 1
    for name in ("mse", "mae", "pcc_gene", "pcc_patch", "r2_gene", "r2_patch", "global_score"):
        key = {"mse": "MSE", "mae": "MAE", "pcc_gene": "PCC-Gene", "pcc_patch": "PCC-Patch",
               "r2_gene": "R2-Gene", "r2_patch": "R2-Patch", "global_score": "Global"}[name]
        assert getattr(metrics, name)(y_true, y_pred, mask) == pytest.approx(got[key], rel=1e-12)


def test_no_mask_scores_everything() -> None:
    y_true, y_pred, _ = _data(seed=1)
    got = metrics.compute(y_true, y_pred)
    ref = _reference(y_true, y_pred, np.ones_like(y_true, dtype=bool))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-10), key
    assert got["n_genes_scored"] == y_true.shape[1] and got["n_spots_scored"] == y_true.shape[0]


def test_global_is_the_authors_sum() -> None:
    """SpaRED's get_metrics: Global = PCC-Gene + PCC-Patch + R2-Gene + R2-Patch − MSE − MAE."""
    y_true, y_pred, mask = _data(seed=2)
    got = metrics.compute(y_true, y_pred, mask)
    ref = _reference(y_true, y_pred, mask)
    expected = ref["PCC-Gene"] + ref["PCC-Patch"] + ref["R2-Gene"] + ref["R2-Patch"] - ref["MSE"] - ref["MAE"]
    assert got["Global"] == pytest.approx(expected, rel=1e-10)
    assert metrics.global_score(y_true, y_true, mask) == pytest.approx(4.0)
    assert metrics.global_score(y_true, -y_true, mask) < metrics.global_score(y_true, y_pred, mask)


def test_per_gene_arrays() -> None:
    y_true, y_pred, mask = _data(seed=3)
    mask[:, 4] = False
    out = metrics.per_gene(y_true, y_pred, mask)
    assert set(out) == {"pcc", "r2", "mse", "n", "scored"}
    for j in range(y_true.shape[1]):
        t, p = y_true[mask[:, j], j], y_pred[mask[:, j], j]
        assert out["n"][j] == len(t)
        if j == 4:
            assert np.isnan(out["pcc"][j]) and np.isnan(out["r2"][j]) and np.isnan(out["mse"][j])
            assert not out["scored"][j]
            continue
        assert out["pcc"][j] == pytest.approx(pearsonr(t, p)[0], rel=1e-10)
        assert out["r2"][j] == pytest.approx(r2_score(t, p), rel=1e-10)
        assert out["mse"][j] == pytest.approx(np.mean((t - p) ** 2), rel=1e-12)


def test_torch_input_matches_numpy() -> None:
    y_true, y_pred, mask = _data(seed=4)
    expected = metrics.compute(y_true, y_pred, mask)
    got = metrics.compute(torch.from_numpy(y_true), torch.from_numpy(y_pred).requires_grad_(), torch.from_numpy(mask))
    assert got == pytest.approx(expected, rel=1e-12)
    as_f32 = metrics.compute(torch.from_numpy(y_true).float(), torch.from_numpy(y_pred).float(), mask)
    assert as_f32 == pytest.approx(metrics.compute(y_true.astype(np.float32), y_pred.astype(np.float32), mask))
    assert as_f32["MSE"] == pytest.approx(expected["MSE"], rel=1e-5)


def test_constant_truth_gene_excluded_and_counted() -> None:
    y_true, y_pred, _ = _data(seed=5)
    y_true[:, 0] = 0.1  # exactly constant; a naive variance would be ~1e-34, not 0
    got = metrics.compute(y_true, y_pred)
    assert got["n_genes_scored"] == y_true.shape[1] - 1 and got["n_genes_excluded"] == 1
    rest = metrics.compute(y_true[:, 1:], y_pred[:, 1:])
    assert got["PCC-Gene"] == pytest.approx(rest["PCC-Gene"]) and got["R2-Gene"] == pytest.approx(rest["R2-Gene"])


def test_integer_mask_accepted() -> None:
    y_true, y_pred, mask = _data(seed=6)
    assert metrics.compute(y_true, y_pred, mask.astype(np.int8)) == metrics.compute(y_true, y_pred, mask)


def test_nothing_scorable_gives_nan_averages() -> None:
    y_true = np.ones((4, 3))
    got = metrics.compute(y_true, y_true + 1)
    assert got["MSE"] == 1.0 and got["n_genes_scored"] == 0 and got["n_spots_scored"] == 0
    assert np.isnan(got["PCC-Gene"]) and np.isnan(got["R2-Patch"]) and np.isnan(got["Global"])


@pytest.mark.parametrize(("y_true", "y_pred", "mask", "message"), [
    (np.zeros((4, 3)), np.zeros((4, 2)), None, r"same shape; found \(4, 3\) and \(4, 2\)"),
    (np.zeros(4), np.zeros(4), None, r"y_true must be 2-D .* found shape \(4,\)"),
    (np.zeros((4, 3)), np.zeros((4, 3)), np.ones((3, 4), bool), r"mask must have the shape .* found \(3, 4\)"),
    (np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3), bool), "mask selects no entries"),
    (np.zeros((4, 3)), np.zeros((4, 3)), np.full((4, 3), 0.5), "mask must be boolean"),
    (np.full((4, 3), np.nan), np.zeros((4, 3)), None, r"y_true has 12 NaN/infinite .*first at \(0, 0\)"),
    (np.zeros((4, 3)), np.array([[0, 0, np.inf]] * 4), None, r"y_pred has 4 NaN/infinite .* \(0, 2\)"),
    (np.array([["a"] * 3] * 4), np.zeros((4, 3)), None, "y_true must be numeric"),
])
def test_bad_input(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.compute(y_true, y_pred, mask)


def test_nan_outside_mask_is_ignored() -> None:
    y_true, y_pred, mask = _data(seed=7)
    with_nan = y_pred.copy()
    with_nan[~mask] = np.nan
    assert metrics.compute(y_true, with_nan, mask) == metrics.compute(y_true, y_pred, mask)
