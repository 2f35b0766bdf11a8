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


def test_kl_and_bootstrap():
    t = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert np.allclose(m.kl_per_sample(t, t), 0)
    assert m.kl_per_sample(t, np.full((2, 3), 1 / 3))[1] == pytest.approx(np.log(3))
    y = np.arange(100) % 2
    lo, hi = m.accuracy_ci(y, y)
    assert lo == hi == 1.0
    lo, hi = m.accuracy_ci(y, np.zeros(100, int))
    assert lo < 0.5 < hi
