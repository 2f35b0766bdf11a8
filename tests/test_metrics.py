import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as sk

from ferbench import metrics as m


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    p = np.where(rng.random(400) < 0.6, y, rng.integers(0, 5, 400))
    return y, p


def test_against_scikit_learn(preds):
    y, p = preds
    assert m.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
    assert m.balanced_accuracy(y, p, 5) == pytest.approx(sk.balanced_accuracy_score(y, p))
    assert m.macro_f1(y, p, 5) == pytest.approx(sk.f1_score(y, p, average="macro"))
    assert (m.confusion_matrix(y, p, 5) == sk.confusion_matrix(y, p, labels=range(5))).all()
    assert np.allclose(m.per_class_recall(y, p, 5), sk.recall_score(y, p, average=None))


def test_mcnemar_matches_scipy_binomial_test():
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.7, rng.random(300) < 0.6
    r = m.mcnemar_exact(a, b)
    n = r["b"] + r["c"]
    assert r["p_value"] == pytest.approx(binomtest(r["b"], n, 0.5).pvalue)
    assert m.mcnemar_exact(a, a)["p_value"] == 1.0


def test_kl_and_single_run_intervals():
    t = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert np.allclose(m.kl_per_sample(t, t), 0)
    assert m.kl_per_sample(t, np.full((2, 3), 1 / 3))[1] == pytest.approx(np.log(3))
    # Wilson's interval by its formula: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, k = 1.959963984540054, 100, 50
    p = k / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert m.wilson_ci(k, n) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    lo, hi = m.wilson_ci(100, 100)
    assert hi == pytest.approx(1.0) and 0.95 < lo < 1.0  # never a zero-width interval, unlike a bootstrap
    y = np.arange(100) % 2
    report = m.classification_report(np.eye(2)[y] * 5, y, ["a", "b"])
    assert report["accuracy"] == 1.0 and report["accuracy_ci95"] == list(m.wilson_ci(100, 100))
    assert "Wilson" in report["accuracy_ci95_method"]


def _scipy_paired_p(d):
    from scipy.stats import permutation_test

    d = np.atleast_2d(d).mean(0)
    return permutation_test((d, np.zeros_like(d)), lambda x, y: np.mean(x - y), permutation_type="samples",
                            n_resamples=np.inf, alternative="two-sided").pvalue


@pytest.mark.parametrize("seed", range(4))
def test_paired_permutation_test_is_scipys_exact_test(seed):
    """Small cases enumerate every sign vector, as scipy does with n_resamples=inf."""
    rng = np.random.default_rng(seed)
    a, b = rng.random((3, 12)) < 0.7, rng.random((3, 12)) < 0.45  # 3 seeds x 12 images
    d = a.astype(int) - b.astype(int)
    got = m.paired_permutation_test(d)
    assert got["exact"] and got["p_value"] == pytest.approx(_scipy_paired_p(d))


def test_paired_permutation_test_unit_is_the_image_not_the_seed():
    """Three seeds that repeat one 40-image result are one experiment on 40 images: the same p as one
    seed, where pooling seeds x images as independent (the old compare) reports a far smaller one."""
    rng = np.random.default_rng(5)
    a, b = rng.random(40) < 0.75, rng.random(40) < 0.55
    one = m.paired_permutation_test(a.astype(int) - b.astype(int), reps=20_000)
    three = m.paired_permutation_test(np.stack([a, a, a]).astype(int) - np.stack([b, b, b]).astype(int), reps=20_000)
    assert three["p_value"] == one["p_value"]
    pooled = m.mcnemar_exact(np.tile(a, 3), np.tile(b, 3))["p_value"]
    assert pooled < one["p_value"] / 5
    # a known difference: A right on 30 more images than B out of 200, B never right where A is wrong
    a = np.r_[np.ones(130, bool), np.zeros(70, bool)]
    b = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    res = m.paired_permutation_test(a.astype(int) - b.astype(int), reps=20_000)
    assert not res["exact"] and res["p_value"] == pytest.approx(1 / 20_001)  # 2^-30 by enumeration: below any resample
    assert m.mcnemar_exact(a, b)["p_value"] == pytest.approx(2 * 0.5**30)


def test_paired_bootstrap_ci_of_a_known_difference():
    a = np.r_[np.ones(130, bool), np.zeros(70, bool)]
    b = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    lo, hi = m.bootstrap_mean_ci(a.astype(np.int8) - b.astype(np.int8), reps=4000)
    se = np.sqrt(0.15 * 0.85 / 200)  # the difference is a proportion of 30 discordant images in 200
    assert lo == pytest.approx(0.15 - 1.96 * se, abs=0.015) and hi == pytest.approx(0.15 + 1.96 * se, abs=0.015)
