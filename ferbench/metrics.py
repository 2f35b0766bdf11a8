"""Everything computed from saved predictions. Small pure numpy functions; no models, no torch.

Conventions: `y_true` and `y_pred` are int arrays of class indices in [0, K); `logits` is (N, K).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as j; shape (K, K), int64."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples with y_pred == y_true (0.0 for an empty array)."""
    y_true = np.asarray(y_true)
    return float((y_true == np.asarray(y_pred)).mean()) if y_true.size else 0.0


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class, C[i, i] / sum_j C[i, j]; NaN for a class absent from y_true."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in y_true (sklearn's balanced_accuracy_score)."""
    r = per_class_recall(y_true, y_pred, num_classes)
    return float(np.nanmean(r)) if np.isfinite(r).any() else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in y_true or y_pred (F1 = 0 if TP = 0)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(float)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def kl_per_sample(target: np.ndarray, pred: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """KL(target || pred) per row, in nats; 0 log 0 = 0."""
    t = np.asarray(target, float)
    p = np.clip(np.asarray(pred, float), eps, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(t > 0, t * (np.log(np.clip(t, eps, 1)) - np.log(p)), 0.0)
    return terms.sum(1)


def expected_calibration_error(logits: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|."""
    p = softmax(logits)
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs((pred[m] == y_true[m]).mean() - conf[m].mean())
    return float(ece)


def bootstrap_mean_ci(values: np.ndarray, reps: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean over test images: the one resampling every CI here uses.

    `values` is (N,) or (S, N): one row per seed (or per run), one column per test image, e.g. 0/1
    correctness or a paired difference of correctness. Each of `reps` replicates draws N image indices
    with replacement (a numpy Generator seeded with `seed`), takes each row's mean over the drawn
    images and averages the rows, so an image's values across seeds stay together. The CI is the
    (alpha/2, 1 - alpha/2) quantiles of the replicates (numpy's linear interpolation).
    """
    v = np.atleast_2d(np.asarray(values))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.shape[1], (reps, v.shape[1]))
    means = v[:, idx].mean(2).mean(0)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Exact (binomial) two-sided McNemar test on paired correctness vectors of one run each (one
    seed: its samples are independent test images; pooling seeds would count an image several times).

    b = A right and B wrong, c = A wrong and B right; p = min(1, 2 * P(X <= min(b, c))), X ~ Bin(b + c, 1/2).
    """
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "p_value": 1.0}
    k = min(b, c)
    cdf = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"b": b, "c": c, "p_value": float(min(1.0, 2 * cdf))}


def paired_permutation_test(diffs: np.ndarray, reps: int = 10_000, seed: int = 0, exact_max: int = 16) -> dict[str, Any]:
    """Two-sided paired permutation (sign-flip) test of H0: A and B are exchangeable on every test image.

    `diffs` is (N,) or (S, N): per test image (column), the difference of A's and B's correctness
    (or any paired score), one row per seed; an image's seeds are one unit, d_i = their mean. Under H0
    each d_i is as likely to be -d_i, so with T = sum_i d_i the p-value is the share of sign vectors s
    with |sum_i s_i d_i| >= |T|: enumerated exactly over the 2^m vectors of the m non-zero d_i when
    m <= `exact_max`, else estimated from `reps` random vectors (a numpy Generator seeded with `seed`)
    as (1 + hits) / (1 + reps), which never reports 0. Equal to scipy.stats.permutation_test with
    permutation_type="samples" on the per-image means (tested).
    """
    d = np.atleast_2d(np.asarray(diffs, float)).mean(0)
    d = d[d != 0]
    m, observed = d.size, abs(d.sum())
    tol = 1e-9 * max(1.0, observed)
    if m == 0:
        return {"p_value": 1.0, "exact": True, "images_that_differ": 0}
    if m <= exact_max:
        signs = 1 - 2 * ((np.arange(2**m)[:, None] >> np.arange(m)) & 1)  # every sign vector
        p = float(np.mean(np.abs(signs @ d) >= observed - tol))
        return {"p_value": p, "exact": True, "images_that_differ": m}
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, reps, 1000):
        signs = rng.integers(0, 2, (min(1000, reps - start), m)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return {"p_value": (1 + hits) / (1 + reps), "exact": False, "images_that_differ": m, "resamples": reps}


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy.stats.binomtest(...).proportion_ci)."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def run_predictive(values: np.ndarray, extra_var: float = 0.0, mean_of: int = 1) -> tuple[float, float, int] | None:
    """(mean, scale, df) of the predictive distribution of one more run (or the mean of `mean_of` more
    runs), from k >= 2 runs' values.

    The result is modelled as mean + scale * T with T Student-t on k - 1 degrees of freedom and
    scale = sqrt(s^2 (1/m + 1/k) + extra_var), s the sample std (ddof 1), m = `mean_of`: for m = 1 the
    classical prediction interval for a new draw from a normal population (the seeds' training
    randomness). `extra_var` adds test-set sampling (p (1 - p) / n) where a run's test images are not
    the claim's. None for k < 2.
    """
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None
    return float(v.mean()), _predictive_scale(float(v.var(ddof=1)), v.size, extra_var, mean_of), int(v.size - 1)


def _predictive_scale(var: float, k: int, extra_var: float, mean_of: int) -> float:
    """sqrt(s^2 (1/m + 1/k) + extra_var): the scale of `run_predictive` from k runs of sample variance s^2."""
    return math.sqrt(var * (1 / mean_of + 1 / k) + extra_var)


def _predictive_interval(m: float, c: float, df: int, confidence: float, best_of: int) -> tuple[float, float]:
    """m + c * t_df^-1(u) at u = q^(1/b) and (1 - q)^(1/b), q = (1 - confidence) / 2, b = `best_of`."""
    from scipy.stats import t

    q = (1 - confidence) / 2
    return m + c * float(t.ppf(q ** (1 / best_of), df)), m + c * float(t.ppf((1 - q) ** (1 / best_of), df))


def single_run_interval(values: np.ndarray, confidence: float = 0.95, best_of: int = 1,
                        extra_var: float = 0.0, mean_of: int = 1) -> tuple[float, float] | None:
    """Central `confidence` interval for one new run of the recipe (or the best of `best_of` runs).

    With (m, c, df) = `run_predictive(values, extra_var)` and q = (1 - confidence) / 2, the interval is
    m + c * t_df^-1(u) at u = q^(1/b) and (1 - q)^(1/b), b = `best_of`: the max of b independent draws
    has cdf F^b. For b = 1 it is scipy.stats.t.interval(confidence, df, m, c); for b > 1 it treats the
    b draws as independent given the observed runs (it ignores that they share the uncertainty in m
    and c, so it is a little narrow for few seeds). `mean_of` = m: the mean of m new runs instead
    (a paper that reports the mean of its m seeds). None for fewer than 2 runs.

    >>> lo, hi = single_run_interval(np.array([0.60, 0.62, 0.64]))  # 0.62 -+ t(0.975, 2) 4.3027 * 0.02 * sqrt(4/3)
    >>> round(lo, 4), round(hi, 4)
    (0.5206, 0.7194)
    """
    pred = run_predictive(values, extra_var, mean_of)
    return None if pred is None else _predictive_interval(*pred, confidence, best_of)


def probability_run_reaches(values: np.ndarray, claim: float, best_of: int = 1, extra_var: float = 0.0,
                            mean_of: int = 1) -> float | None:
    """P(one new run, or the best of `best_of`, scores >= `claim`) under `run_predictive`: 1 - F(claim)^b.

    >>> round(probability_run_reaches(np.array([0.60, 0.62, 0.64]), 0.62), 3)
    0.5
    """
    from scipy.stats import t

    pred = run_predictive(values, extra_var, mean_of)
    if pred is None:
        return None
    m, c, df = pred
    return 1.0 - float(t.cdf((claim - m) / c, df)) ** best_of if c > 0 else float(m >= claim)


def seeds_to_settle(mean: float, std: float, claim: float, confidence: float = 0.95, best_of: int = 1,
                    extra_var: float = 0.0, most: int = 50, mean_of: int = 1) -> int | None:
    """The fewest runs k >= 3 whose single-run interval (same mean and std as observed) would exclude
    `claim`, i.e. would turn the verdict to below/above if the spread holds; None when no k <= `most`
    does (the claim lies within the recipe's own spread: more seeds would confirm it, not refute it).

    >>> seeds_to_settle(0.87055, 0.00177, 0.8789), seeds_to_settle(0.62, 0.02, 0.63)
    (4, None)
    """
    for k in range(3, most + 1):
        lo, hi = _predictive_interval(mean, _predictive_scale(std ** 2, k, extra_var, mean_of), k - 1, confidence, best_of)
        if not lo <= claim <= hi:
            return k
    return None


def seed_level_difference(acc_a: np.ndarray, acc_b: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Is method A better than method B, with the run (seed) as the unit (Bouthillier et al., "Accounting
    for Variance in Machine Learning Benchmarks", MLSys 2021).

    `acc_a[i]` and `acc_b[i]` are the two methods' accuracies at seed i (paired: same seed, same test
    set). Returns the mean difference, its t interval over the k paired seeds (k - 1 df), the paired t
    test's two-sided p (scipy.stats.ttest_rel; None below 2 seeds or with no spread) and P(A > B): the
    share of all (run of A, run of B) pairs where A's run is better, ties counted half, the estimator of
    the probability that a run of A beats a run of B.

    >>> r = seed_level_difference(np.array([0.70, 0.72, 0.71]), np.array([0.69, 0.70, 0.71]))  # wins 1.5 + 3 + 2.5 of 9
    >>> round(r["mean_diff"], 4), [round(x, 4) for x in r["ci"]], round(r["p_value"], 3), round(r["p_a_beats_b"], 3)
    (0.01, [-0.0148, 0.0348], 0.225, 0.778)
    """
    from scipy.stats import t, ttest_rel

    a, b = np.asarray(acc_a, dtype=float), np.asarray(acc_b, dtype=float)
    d = a - b
    k = d.size
    wins = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    out: dict[str, Any] = {"seeds": int(k), "mean_diff": float(d.mean()), "ci": None, "p_value": None,
                           "p_a_beats_b": float(wins), "test": "paired t test over seeds (scipy.stats.ttest_rel)"}
    if k >= 2 and d.std(ddof=1) > 0:
        half = float(t.ppf(1 - (1 - confidence) / 2, k - 1)) * float(d.std(ddof=1)) / math.sqrt(k)
        out["ci"] = [float(d.mean()) - half, float(d.mean()) + half]
        out["p_value"] = float(ttest_rel(a, b).pvalue)
    return out


def classification_report(logits: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The metrics stored in metrics.json for one split and one model selection."""
    k = len(classes)
    y_pred = logits.argmax(1)
    lo, hi = wilson_ci(int((y_true == y_pred).sum()), int(y_true.size))
    return {
        "n": int(y_true.size),
        "accuracy": accuracy(y_true, y_pred),
        "accuracy_ci95": [lo, hi],
        "accuracy_ci95_method": "Wilson score interval over the test images (binomial)",
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, k),
        "macro_f1": macro_f1(y_true, y_pred, k),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, per_class_recall(y_true, y_pred, k))},
        "confusion": confusion_matrix(y_true, y_pred, k).tolist(),
        "ece": expected_calibration_error(logits, y_true),
    }
