"""Verdicts on the run-to-run distribution: synthetic seeds with a known spread, a claim placed inside,
above and below one run's range, few seeds, the paper's selection rules, and the statistics checked
against scipy and against simulation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from ferbench.metrics import probability_run_reaches, seeds_to_settle, single_run_interval
from ferbench.report.tables import seed_values
from ferbench.report.verdicts import MAX_HALF_WIDTH, run_spread

N_TEST = 1000


@dataclass
class FakeRecord:
    """What run_spread reads of a record: the seed, fold, subset, test accuracy and per-epoch history."""

    seed: int
    acc: float
    fold: int | None = None
    n: int = N_TEST
    epochs: list[float] = field(default_factory=list)
    subset: dict = field(default_factory=dict)

    @property
    def job(self):
        return SimpleNamespace(seed=self.seed, fold=self.fold, dataset=SimpleNamespace(subset_sizes=lambda: self.subset))

    def metrics(self):
        res = {"accuracy": self.acc, "confusion": [[self.n]]}
        return {"test": {"last": res, "best": res}}

    def history(self):
        return [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(self.epochs)]


def records(accs, **kw):
    return [FakeRecord(seed=i, acc=a, **kw) for i, a in enumerate(accs)]


def test_the_single_run_interval_is_scipys_t_prediction_interval():
    v = np.array([0.71, 0.69, 0.72, 0.70, 0.68])
    k, s = v.size, v.std(ddof=1)
    want = stats.t.interval(0.95, k - 1, loc=v.mean(), scale=s * math.sqrt(1 + 1 / k))
    assert single_run_interval(v) == pytest.approx(want)
    assert probability_run_reaches(v, v.mean()) == pytest.approx(0.5)
    assert probability_run_reaches(v, want[1]) == pytest.approx(0.025)
    assert single_run_interval(v[:1]) is None and probability_run_reaches(v[:1], 0.7) is None


def test_the_interval_holds_a_new_run_95_times_in_100():
    """Coverage by simulation: seeds from N(0.7, 0.01), the next run inside the interval ~95 % of the time."""
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(4000):
        draws = rng.normal(0.70, 0.01, 6)
        lo, hi = single_run_interval(draws[:5])
        hits.append(lo <= draws[5] <= hi)
    assert abs(np.mean(hits) - 0.95) < 0.015
    # the best of 3 runs: its quantiles against simulated maxima of 3 draws of the predictive t
    v = np.array([0.70, 0.71, 0.69, 0.72, 0.70, 0.71, 0.69, 0.70])
    lo, hi = single_run_interval(v, best_of=3)
    scale = v.std(ddof=1) * math.sqrt(1 + 1 / v.size)
    sims = (v.mean() + scale * stats.t.rvs(v.size - 1, size=(200_000, 3), random_state=1)).max(1)
    assert np.quantile(sims, [0.025, 0.975]) == pytest.approx([lo, hi], abs=4e-4)
    assert probability_run_reaches(v, 0.72, best_of=3) == pytest.approx((sims >= 0.72).mean(), abs=3e-3)


@pytest.mark.parametrize("claim, verdict", [(0.700, "reproduced"), (0.760, "below"), (0.640, "above")])
def test_a_claim_inside_above_and_below_one_runs_range(claim, verdict):
    accs = [0.69, 0.70, 0.71, 0.695, 0.705]  # std 0.0079: one run's interval is 0.70 +- 0.024
    out = run_spread(claim, {}, records(accs), "last")
    assert out["direction"] == verdict and out["basis"] == "last epoch"
    lo, hi = out["interval"]
    assert lo < 0.70 < hi and (lo <= claim <= hi) == (verdict == "reproduced")
    assert out["p_reach"] == pytest.approx(probability_run_reaches(np.array(accs), claim))


def test_few_seeds_are_inconclusive_and_say_how_many_would_settle_it():
    one = run_spread(0.70, {}, records([0.69]), "last")
    assert one["direction"] == "inconclusive" and one["interval"] is None and one["seeds_needed"] == 3
    two = run_spread(0.8789, {}, records([0.8718, 0.8693]), "last")  # table6-gpu-paper's best test epochs
    assert two["direction"] == "inconclusive" and two["seeds_needed"] == 4
    assert "4 seeds would show it below if this spread holds" in two["why"]
    assert seeds_to_settle(0.87055, float(np.std([0.8718, 0.8693], ddof=1)), 0.8789) == 4
    far = run_spread(0.95, {}, records([0.8718, 0.8693]), "last")  # outside even two seeds' wide interval
    assert far["direction"] == "below"


def test_a_recipe_that_spreads_widely_confirms_nothing():
    """Deep-Emotion's three seeds (one stuck at the majority class): the claim sits inside a huge interval."""
    out = run_spread(0.7002, {}, records([0.2494, 0.5229, 0.5375]), "last")
    assert out["direction"] == "inconclusive" and (out["interval"][1] - out["interval"][0]) / 2 <= 0.5
    assert "the recipe itself is unstable" in out["why"] and out["seeds_needed"] is None
    assert out["interval"][0] == 0.0 and out["interval"][1] == 1.0  # an accuracy: the tails are cut at 0 and 1
    assert MAX_HALF_WIDTH == 0.05


def test_the_papers_selection_rule_is_the_basis_where_the_records_allow():
    recs = [FakeRecord(0, 0.700, epochs=[0.60, 0.720, 0.700]), FakeRecord(1, 0.699, epochs=[0.61, 0.719, 0.699]),
            FakeRecord(2, 0.701, epochs=[0.62, 0.721, 0.701])]
    out = run_spread(0.72, {"selection": "best-test"}, recs, "last")
    assert out["basis"] == "best test epoch (test-selected, as the paper)" and out["mean"] == pytest.approx(0.72)
    assert out["direction"] == "reproduced"
    plain = run_spread(0.72, {}, recs, "last")
    assert plain["mean"] == pytest.approx(0.70) and plain["direction"] == "below"  # the last epoch would call it below
    best3 = run_spread(0.72, {"selection": "max-of-seeds", "seeds": 3}, recs, "last")
    assert best3["basis"] == "last epoch, best of 3 runs (as the paper)" and best3["p_reach"] > plain["p_reach"]


def test_folds_pool_per_seed_and_a_test_subset_adds_image_sampling():
    recs = [FakeRecord(seed, acc, fold=fold, n=n) for seed, per in enumerate([(0.9, 0.8), (0.85, 0.75), (0.95, 0.7)])
            for fold, (acc, n) in enumerate(zip(per, (300, 100)))]
    values, n_images = seed_values(recs, "last")
    assert values == pytest.approx([(0.9 * 300 + 0.8 * 100) / 400, (0.85 * 300 + 0.75 * 100) / 400, (0.95 * 300 + 0.7 * 100) / 400])
    assert n_images == 400
    full = run_spread(0.85, {}, records([0.70, 0.71, 0.69]), "last")
    sub = run_spread(0.85, {}, records([0.70, 0.71, 0.69], subset={"test": N_TEST}), "last")
    extra = 0.70 * 0.30 / N_TEST
    k, s = 3, np.std([0.70, 0.71, 0.69], ddof=1)
    assert (sub["interval"][1] - 0.70) == pytest.approx(stats.t.ppf(0.975, k - 1) * math.sqrt(s ** 2 * (1 + 1 / k) + extra))
    assert sub["interval"][1] > full["interval"][1] and "test-image sampling" in sub["method"]


def test_best_test_intervals_count_each_seeds_test_images_once():
    """The seeds are tested on the same images: test sampling is p (1 - p) / n for one run's n images,
    whatever the number of seeds, and the best test epoch is a max over epochs of those images."""
    bests = [0.72, 0.70, 0.71, 0.73]
    recs = [FakeRecord(i, b - 0.01, epochs=[0.5, b, b - 0.01], subset={"test": N_TEST}) for i, b in enumerate(bests)]
    out = run_spread(0.71, {"selection": "best-test"}, recs, "last")
    k, m, s = len(bests), np.mean(bests), np.std(bests, ddof=1)
    once = stats.t.ppf(0.975, k - 1) * math.sqrt(s ** 2 * (1 + 1 / k) + m * (1 - m) / N_TEST)
    as_new_images = stats.t.ppf(0.975, k - 1) * math.sqrt(s ** 2 * (1 + 1 / k) + m * (1 - m) / (k * N_TEST))
    assert out["interval"][1] - m == pytest.approx(once) and not once == pytest.approx(as_new_images)


def test_a_paper_that_reports_the_mean_of_its_seeds_gets_the_interval_of_a_mean():
    accs = [0.69, 0.70, 0.71, 0.695, 0.705]
    one = run_spread(0.72, {"seeds": 1}, records(accs), "last")
    mean3 = run_spread(0.72, {"seeds": 3}, records(accs), "last")
    k, s = 5, np.std(accs, ddof=1)
    assert mean3["interval"][1] - 0.70 == pytest.approx(stats.t.ppf(0.975, k - 1) * s * math.sqrt(1 / 3 + 1 / k))
    assert mean3["basis"] == "last epoch, mean of 3 runs (as the paper)" and mean3["interval"][1] < one["interval"][1]


def test_conditions_compare_pretraining_by_kind_and_name_a_carved_validation_split():
    from ferbench.report.verdicts import data_condition, differences, pretraining_kind

    run = {"input_size": 224, "pretraining": "convnext_tiny.fb_in1k", "data": "full", "kind": "retrained"}
    assert differences({"pretraining": "imagenet-22k"}, run) == ["pretraining: paper imagenet-22k vs run convnext_tiny.fb_in1k"]
    assert differences({"pretraining": "imagenet-1k"}, run) == []
    assert pretraining_kind("KDEF") != pretraining_kind("imagenet-1k") != pretraining_kind("none")
    assert data_condition({}, {"val_rule": "stratified 0.1 of train, seed 0"}, {}) != "full"
    assert data_condition({}, {}, {"protocol": "carve-val"}) != "full"
    assert data_condition({}, {"protocol": "Training->train, PublicTest->val, PrivateTest->test"}, {"protocol": "standard"}) == "full"
    assert data_condition({"train": 3000}, {}, {}) == "subset (train 3000)"
    ferplus = {**run, "vote_table": "fer2013new.csv", "test_images": 3152, "pretraining": "none"}
    assert differences({"vote_table": "label.csv", "test_images": 3573}, ferplus) == [
        "vote table: paper label.csv vs run fer2013new.csv", "test images: paper 3573 vs run 3152"]
