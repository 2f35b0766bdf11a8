"""A page's paired differences: each model against the spec's first on the same dataset, the seed as
the unit, checked against scipy; seeds tested on other images are never paired; the published
ablation page shows the numbers its records give."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from scipy import stats

from ferbench.report.tables import paired_rows

ROOT = Path(__file__).resolve().parents[1]
LABELS = np.arange(100) % 7


class Rec:
    """What paired_rows reads of a record: label, model, dataset, seed, test accuracy and labels."""

    complete = True

    def __init__(self, model: str, seed: int, acc: float, labels: np.ndarray = LABELS):
        self.label, self.acc, self.labels = model, acc, labels
        self.job = SimpleNamespace(seed=seed, fold=None, model=SimpleNamespace(id=model, arch="resnet18"),
                                   dataset=SimpleNamespace(id="d"))

    def metrics(self):
        return {"test": {"last": {"accuracy": self.acc, "confusion": [[self.labels.size]]}}}

    def predictions(self):
        return {"test.labels": self.labels}

    def same_data(self, other) -> bool:  # one dataset throughout
        return True


def test_each_model_is_paired_with_the_first_by_seed_and_matches_scipy():
    base, abc = [0.60, 0.62, 0.61], [0.63, 0.63, 0.65]
    recs = [Rec("A", s, a) for s, a in enumerate(base)] + [Rec("ABC", s, a) for s, a in enumerate(abc)]
    claims = [{"model": "A", "dataset": "d", "value": 88.0}, {"model": "ABC", "dataset": "d", "value": 89.5}]
    (row,) = paired_rows(recs, claims)
    d = np.array(abc) - np.array(base)
    assert (row["a"], row["b"], row["seeds"]) == ("ABC", "A", 3)
    assert row["mean_diff"] == pytest.approx(d.mean())
    assert row["ci"] == pytest.approx(stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d)))
    assert row["p_value"] == pytest.approx(stats.ttest_rel(abc, base).pvalue)
    assert row["p_a_beats_b"] == pytest.approx(1.0) and row["paper_diff"] == pytest.approx(0.015)


def test_seeds_on_other_test_images_or_missing_on_one_side_are_not_paired():
    other = LABELS[::-1].copy()
    recs = [Rec("A", 0, 0.6), Rec("A", 1, 0.6), Rec("B", 0, 0.7, other), Rec("B", 1, 0.7), Rec("B", 2, 0.7)]
    (row,) = paired_rows(recs, [])
    assert row["seed_ids"] == [1] and row["ci"] is None and row["paper_diff"] is None
    assert paired_rows([Rec("A", 0, 0.6), Rec("B", 0, 0.7, other)], []) == []
    assert paired_rows([Rec("A", 0, 0.6)], []) == []


def test_the_published_ablation_page_shows_what_its_records_give():
    """reports/resface_ablation/: each row of the paired table recomputed from the records' metrics.json."""
    folder = ROOT / "reports" / "resface_ablation"
    acc: dict[str, dict[int, float]] = {}
    for m in folder.glob("records/*/*/metrics.json"):
        job = yaml.safe_load((m.parent / "job.yaml").read_text())
        job = job.get("job", job)
        acc.setdefault(job["model"]["id"], {})[job["seed"]] = json.loads(m.read_text())["test"]["last"]["accuracy"]
    page = (folder / "report.md").read_text()
    for model in ("A+B", "A+C", "A+B+C"):
        seeds = sorted(acc[model])
        d = np.array([acc[model][s] - acc["A"][s] for s in seeds])
        lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
        p = stats.ttest_rel([acc[model][s] for s in seeds], [acc["A"][s] for s in seeds]).pvalue
        want = (f"| ferplus | **{model}** | A | {d.size} | **{100 * d.mean():+.2f}** | \\[{100 * lo:+.2f}, {100 * hi:+.2f}\\] "
                f"| {p:.3g} |")
        assert want in page, want


def test_two_evaluations_of_one_model_are_paired_without_a_paper_difference():
    a, b = [Rec("m", s, 0.6 + s / 100) for s in range(2)], [Rec("m", s, 0.62) for s in range(2)]
    for r in b:
        r.label = "m [eval.tta=flip]"
    (row,) = paired_rows(a + b, [{"model": "m", "dataset": "d", "value": 60.0}])
    assert row["paper_diff"] is None and row["seeds"] == 2
