"""Generation metrics on fixed synthetic features (no Inception): Inception Score, ADM k-NN precision/recall,
sFID/gFID through the scoring layer, each against a direct numpy transcription of ADM's evaluator, plus
streaming/batching invariances and the null-with-reason paths."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from vtbench.gfid import Reference, score_state
from vtbench.metrics.frechet import GaussianStats
from vtbench.metrics.generation import (
    GenerationState,
    InceptionScoreState,
    inception_score,
    manifold_membership,
    manifold_radii,
    precision_recall,
    softmax64,
)
from vtbench.metrics.inception import SPATIAL_DIM, adm_spatial


# -- numpy references, written as ADM's evaluations/evaluator.py computes them ----------------------------------
def np_inception_score(logits: np.ndarray, split_size: int) -> float:
    """evaluator.py L179-192 on float64 softmax probabilities."""
    z = logits - logits.max(axis=1, keepdims=True)
    preds = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def np_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = np.sum((a[i] - b[j]) ** 2)
    return out


def np_radii(x: np.ndarray, k: int) -> np.ndarray:
    """ManifoldEstimator.manifold_radii: column k of the partitioned own-set distance row (self included)."""
    return np.partition(np_sq_dist(x, x), k, axis=1)[:, k]


def np_precision_recall(ref: np.ndarray, smp: np.ndarray, k: int) -> tuple[float, float]:
    """ManifoldEstimator.evaluate_pr with features_1 = reference, features_2 = samples (L197-202, L325-359)."""
    r_ref, r_smp = np_radii(ref, k), np_radii(smp, k)
    d = np_sq_dist(ref, smp)  # (N_ref, N_smp)
    ref_in = [any(d[i, j] <= r_smp[j] for j in range(len(smp))) for i in range(len(ref))]
    smp_in = [any(d[i, j] <= r_ref[i] for i in range(len(ref))) for j in range(len(smp))]
    return float(np.mean(smp_in)), float(np.mean(ref_in))


def np_frechet_adm(x: np.ndarray, y: np.ndarray) -> float:
    """FIDStatistics.frechet_distance (L72-115) on np.mean / np.cov statistics (L174-177)."""
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2)).real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# -- Inception Score ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split_size", [1, 5, 7, 23, 5000])
def test_inception_score_matches_adm_formula(split_size):
    rng = np.random.default_rng(split_size)
    logits = rng.normal(0, 3, size=(23, 1008))
    expected = np_inception_score(logits, split_size)
    state = InceptionScoreState(split_size=split_size)
    for lo, hi in ((0, 7), (7, 8), (8, 23)):  # uneven batches crossing split boundaries
        state.update_logits(torch.from_numpy(logits[lo:hi]))
    assert state.n == 23
    assert abs(state.compute() - expected) < 1e-10 * expected
    assert abs(inception_score(softmax64(logits), split_size) - expected) < 1e-10 * expected


def test_inception_score_edge_cases():
    # one sample per split: KL = 0 exactly, IS = 1
    assert inception_score(softmax64(np.random.default_rng(0).normal(size=(4, 10))), split_size=1) == pytest.approx(1.0)
    # one-hot predictions spread evenly over C classes: IS = C (0 log 0 taken as 0, where ADM's float32 gives NaN)
    assert inception_score(np.eye(5)) == pytest.approx(5.0, rel=1e-12)
    with pytest.raises(ValueError):
        InceptionScoreState().compute()


# -- precision / recall ---------------------------------------------------------------------------------------
def test_precision_recall_matches_numpy_on_random_features():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 16))
    smp = rng.normal(0.3, 1.2, size=(25, 16))
    expected = np_precision_recall(ref, smp, 3)
    assert precision_recall(torch.from_numpy(ref), torch.from_numpy(smp), 3) == expected
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a case that exercises both outcomes
    radii = manifold_radii(torch.from_numpy(ref), 3).numpy()
    assert np.max(np.abs(radii - np_radii(ref, 3))) < 1e-12


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_precision_recall_ties_and_duplicates_exact(k):
    # small integer grid: many equal distances, duplicated points (radius 0), all arithmetic exact in float64
    rng = np.random.default_rng(k)
    ref = rng.integers(0, 3, size=(40, 3)).astype(np.float64)
    smp = rng.integers(0, 4, size=(33, 3)).astype(np.float64)
    assert precision_recall(ref, smp, k) == np_precision_recall(ref, smp, k)
    assert np.array_equal(manifold_radii(torch.from_numpy(ref), k).numpy(), np_radii(ref, k))


def test_precision_recall_block_size_and_float32_storage_invariant():
    rng = np.random.default_rng(1)
    ref = torch.from_numpy(rng.normal(size=(37, 8)).astype(np.float32))
    smp = torch.from_numpy(rng.normal(0.2, 1.0, size=(29, 8)).astype(np.float32))
    results = {precision_recall(ref, smp, 3, block_size=b) for b in (1, 5, 16, 4096)}
    assert len(results) == 1
    assert results.pop() == np_precision_recall(ref.double().numpy(), smp.double().numpy(), 3)


def test_precision_recall_k_edges_and_direction():
    ref = np.arange(8, dtype=np.float64)[:, None] * np.ones((1, 2))  # points on a line, 1 apart
    # N = k + 1: every radius is the distance to the farthest other point, so everything is covered
    assert precision_recall(ref[:4], ref[:4] + 0.5, 3) == np_precision_recall(ref[:4], ref[:4] + 0.5, 3)
    with pytest.raises(ValueError, match="at least 4 points"):
        manifold_radii(torch.from_numpy(ref[:3]), 3)
    # samples collapsed next to one reference point: all inside the reference manifold (precision 1), while they
    # cover only the reference points near them (recall low). Which number is which is ADM's L197-202, L356-359.
    smp = ref[:1] + np.linspace(-0.2, 0.2, 5)[:, None]
    p, r = precision_recall(ref, smp, 3)
    assert (p, r) == np_precision_recall(ref, smp, 3)
    assert p == 1.0 and r == 1 / 8
    # exact duplicates have radius 0 (their own copies are their nearest neighbours), as in ADM
    dup = np.repeat(ref[:1], 5, axis=0) + 0.01
    assert precision_recall(ref, dup, 3) == np_precision_recall(ref, dup, 3) == (1.0, 0.0)
    # membership is "<=": a point exactly on a ball's boundary is inside
    balls = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert manifold_membership(torch.tensor([[3.0, 4.0], [3.0, 4.1]]), balls,
                               torch.tensor([25.0])).tolist() == [True, False]


# -- spatial features and the scoring layer -------------------------------------------------------------------
def test_adm_spatial_is_nhwc_first_seven_channels():
    conv = torch.randn(2, 192, 17, 17)
    expected = np.transpose(conv.numpy(), (0, 2, 3, 1))[..., :7].reshape(2, -1)
    got = adm_spatial(conv)
    assert got.shape == (2, SPATIAL_DIM) and got.dtype == torch.float64
    assert torch.equal(got, torch.from_numpy(expected).double())


def _state(pool: np.ndarray, spatial: np.ndarray, logits: np.ndarray | None, batch: int) -> GenerationState:
    st = GenerationState(pool.shape[1], spatial.shape[1], split_size=7)
    for i in range(0, len(pool), batch):
        st.update(torch.from_numpy(pool[i:i + batch]), torch.from_numpy(spatial[i:i + batch]),
                  None if logits is None else torch.from_numpy(logits[i:i + batch]))
    return st


def _fixed(seed: int = 0):
    rng = np.random.default_rng(seed)
    ref_pool, ref_sp = rng.normal(size=(60, 12)), rng.normal(size=(60, 10))
    smp_pool, smp_sp = rng.normal(0.2, 1.1, size=(45, 12)), rng.normal(-0.1, 0.9, size=(45, 10))
    logits = rng.normal(0, 2, size=(45, 20))
    ref = Reference("synthetic", {"id": "synthetic"},
                    GaussianStats(ref_pool.mean(0), np.cov(ref_pool, rowvar=False), 60),
                    GaussianStats(ref_sp.mean(0), np.cov(ref_sp, rowvar=False), 60),
                    torch.from_numpy(ref_pool.astype(np.float32)), extractor="synthetic")
    return ref, ref_pool, ref_sp, smp_pool, smp_sp, logits


def test_score_state_matches_numpy_and_is_batch_invariant():
    ref, ref_pool, ref_sp, smp_pool, smp_sp, logits = _fixed()
    runs = [score_state(_state(smp_pool, smp_sp, logits, b), ref) for b in (1, 4, 45)]
    for key in ("gfid", "sfid", "inception_score", "precision", "recall"):
        vals = [r[key].value for r in runs]
        assert all(v is not None for v in vals), key
        assert max(vals) - min(vals) <= 1e-9 * max(1.0, abs(vals[0])), (key, vals)
    v = runs[0]
    assert v["gfid"].value == pytest.approx(np_frechet_adm(smp_pool, ref_pool), rel=1e-7)
    assert v["sfid"].value == pytest.approx(np_frechet_adm(smp_sp, ref_sp), rel=1e-7)
    assert v["inception_score"].value == pytest.approx(np_inception_score(logits, 7), rel=1e-10)
    # features are kept as float32 (Inception's own precision): the reference sees them the same way
    p, r = np_precision_recall(ref_pool.astype(np.float32).astype(np.float64),
                               smp_pool.astype(np.float32).astype(np.float64), 3)
    assert (v["precision"].value, v["recall"].value) == (p, r)
    assert v["gfid"].higher_is_better is False and v["precision"].higher_is_better is True
    assert v["precision"].extra["k"] == 3 and v["inception_score"].extra["n_splits"] == 7


def test_score_state_nulls_carry_reasons():
    ref, _, _, smp_pool, smp_sp, _ = _fixed(1)
    only_pool = Reference("adm", {"id": "adm"}, ref.pool, None, None,
                          missing={"sfid": "x.npz has no mu_s/sigma_s", "precision_recall": "x.npz holds no arr_0"})
    v = score_state(_state(smp_pool, smp_sp, None, 10), only_pool)
    assert v["gfid"].value is not None and v["gfid"].reason is None
    assert v["sfid"].value is None and "mu_s" in v["sfid"].reason
    assert v["precision"].value is None and "arr_0" in v["precision"].reason and "arr_0" in v["recall"].reason
    assert v["inception_score"].value is None and "logits" in v["inception_score"].reason
    few = score_state(_state(smp_pool[:3], smp_sp[:3], None, 10), ref)
    assert few["precision"].value is None and "at least 4" in few["precision"].reason
    assert few["gfid"].value is not None
    one = score_state(_state(smp_pool[:1], smp_sp[:1], None, 10), ref)
    assert one["gfid"].value is None and "at least 2" in one["gfid"].reason
    for m in list(v.values()) + list(few.values()) + list(one.values()):
        assert (m.value is None) == (m.reason is not None)
