"""Tables from run records (pandas). Reads records only; never imports the engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ferbench.metrics import bootstrap_mean_ci, seed_level_difference
from ferbench.records import RunRecord, metrics_cost


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per complete run, with the numbers the tables need."""
    rows = []
    for r in records:
        if not r.complete:
            continue
        job, m = r.job, r.metrics()
        test = m.get("test", {})
        prof = metrics_cost(m)
        row: dict[str, Any] = {
            "run": r.id, "model": r.label, "model_id": job.model.id, "arch": job.model.arch, "dataset": job.dataset.id,
            "seed": job.seed, "input_size": job.train.input_size, "epochs": job.train.epochs,
            "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"), "recipe": job.recipe,
            "params": prof.get("params"), "gmacs": prof.get("gmacs"), "latency_ms": prof.get("latency_ms_cpu"),
        }
        for which in ("last", "best"):
            t = test.get(which)
            if t:
                row[f"acc_{which}"] = t["accuracy"]
                row[f"bacc_{which}"] = t["balanced_accuracy"]
                row[f"f1_{which}"] = t["macro_f1"]
        rows.append(row)
    return pd.DataFrame(rows)


def pooled_ci(records: list[RunRecord], which: str, reps: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap 95 % CI of the seed-mean test accuracy, resampling test samples (paired across seeds).

    Cross-validation runs (several folds) are first joined per seed: the folds' test sets together
    cover the data once, so each seed contributes one row over every tested image. None when the
    records cannot be paired (a seed missing a fold, test sets of different sizes)."""
    hits: dict[int, dict[int | None, np.ndarray]] = {}
    for r in records:
        p = r.predictions()
        key = f"test.{which}.logits"
        if key not in p:
            return None
        hits.setdefault(r.job.seed, {})[r.job.fold] = p[key].argmax(1) == p["test.labels"]
    folds = {tuple(sorted(per, key=str)) for per in hits.values()}
    if len(folds) != 1:
        return None
    rows = [np.concatenate([per[f] for f in sorted(per, key=str)]) for per in hits.values()]
    if not rows or len({h.size for h in rows}) != 1:
        return None
    return bootstrap_mean_ci(np.stack(rows).astype(float), reps, seed=seed)  # (seeds, N): images resampled


def per_seed_accuracy(recs: list[RunRecord], which: str) -> dict[int, tuple[float, int]]:
    """{seed: (accuracy, images tested)}, a seed's folds pooled (correct over tested images). `which`
    is last, best (validation-selected) or best-test (each fold's best per-epoch test accuracy,
    history.csv's test_acc; NaN where it was not recorded)."""
    per_seed: dict[int, list[tuple[float, int]]] = {}
    for r in recs:
        res = r.metrics()["test"]["last" if which == "best-test" else which]
        n = int(np.asarray(res["confusion"]).sum())
        if which == "best-test":
            acc = max((row["test_acc"] for row in r.history() if isinstance(row.get("test_acc"), (int, float))), default=np.nan)
        else:
            acc = res["accuracy"]
        per_seed.setdefault(r.job.seed, []).append((acc, n))
    return {s: (sum(a * n for a, n in v) / sum(n for _, n in v), sum(n for _, n in v)) for s, v in sorted(per_seed.items())}


def seed_values(recs: list[RunRecord], which: str) -> tuple[np.ndarray, int]:
    """One accuracy per seed (`per_seed_accuracy`, in seed order) and the images a seed is tested on."""
    per_seed = per_seed_accuracy(recs, which)
    return np.array([a for a, _ in per_seed.values()]), next(iter(per_seed.values()))[1]


def _test_labels(recs: list[RunRecord], seed: int) -> np.ndarray | None:
    """A seed's test labels, its folds joined in fold order (None when a record holds none)."""
    mine = sorted((r for r in recs if r.job.seed == seed), key=lambda r: str(r.job.fold))
    labels = [r.predictions().get("test.labels") for r in mine]
    return None if any(lab is None for lab in labels) else np.concatenate(labels)


def _same_data(recs: list[RunRecord], ref_recs: list[RunRecord], seed: int) -> bool:
    """Whether a seed's records of two experiments were made from the same data, fold by fold."""
    mine = {r.job.fold: r for r in recs if r.job.seed == seed}
    theirs = {r.job.fold: r for r in ref_recs if r.job.seed == seed}
    return mine.keys() == theirs.keys() and all(mine[f].same_data(theirs[f]) for f in mine)


def paired_rows(records: list[RunRecord], claims: list[dict[str, Any]], which: str = "last") -> list[dict[str, Any]]:
    """Every experiment of a dataset against the page's first (the spec's first model: its reference
    row, as an ablation's baseline), with the seed as the unit (`metrics.seed_level_difference` over
    the seeds both ran on the same test images), and the difference the paper's claims for those model
    ids state (at the paper's own architecture and conditions, which may not be these runs')."""
    groups: dict[str, dict[str, list[RunRecord]]] = {}
    for r in records:
        if r.complete:
            groups.setdefault(r.job.dataset.id, {}).setdefault(r.label, []).append(r)
    out = []
    for d, by_label in groups.items():
        if len(by_label) < 2:
            continue
        (ref, ref_recs), *others = by_label.items()
        b = per_seed_accuracy(ref_recs, which)
        ref_labels = {s: _test_labels(ref_recs, s) for s in b}
        for label, recs in others:
            a = per_seed_accuracy(recs, which)
            same_test = {s: _test_labels(recs, s) for s in a if s in b}
            seeds = [s for s, y in same_test.items() if y is not None and np.array_equal(y, ref_labels[s])
                     and _same_data(recs, ref_recs, s)]
            if not seeds:
                continue
            # the paper's difference at its own setting (its arch and conditions): context, never a verdict
            claimed = [next((c["value"] / 100 for c in claims if c.get("metric", "accuracy") == "accuracy"
                             and c["model"] == rs[0].job.model.id and c["dataset"] == d), None) for rs in (recs, ref_recs)]
            out.append({"dataset": d, "a": label, "b": ref, "seed_ids": seeds,
                        **seed_level_difference(np.array([a[s][0] for s in seeds]), np.array([b[s][0] for s in seeds])),
                        "paper_diff": None if None in claimed or recs[0].job.model.id == ref_recs[0].job.model.id
                        else claimed[0] - claimed[1]})  # one model's two evaluations: its claim is not a difference
    return out


def majority_rate(records: list[RunRecord]) -> float | None:
    """The test accuracy of always predicting the most frequent test class (one seed's test images, its
    folds joined): the floor every accuracy on the page is read against."""
    if not records:
        return None
    y = _test_labels(records, min(r.job.seed for r in records))
    return float(np.bincount(y).max() / y.size) if y is not None and y.size else None


def fold_table(records: list[RunRecord], which: str = "last") -> list[dict[str, Any]]:
    """Per (model, dataset) run under several cross-validation folds: each fold's test accuracy (mean
    over seeds), and the mean and sample std over folds, as CK+ papers report them."""
    df = runs_frame(records)
    if df.empty or f"acc_{which}" not in df:
        return []
    df["fold"] = [next((r.job.fold for r in records if r.id == run), None) for run in df["run"]]
    out = []
    for (model, dataset), sub in df.groupby(["model", "dataset"], sort=False):
        per_fold = sub.dropna(subset=["fold"]).groupby("fold")[f"acc_{which}"].mean()
        if len(per_fold) < 2:
            continue
        out.append({"model": model, "dataset": dataset, "folds": {int(f): float(a) for f, a in per_fold.items()},
                    "mean": float(per_fold.mean()), "std": float(per_fold.std(ddof=1)),
                    "seeds": int(sub.groupby("fold").size().min())})
    return out


def claim_matches(claim: dict[str, Any], model_id: str, arch: str, dataset: str) -> bool:
    """Whether runs of this model id, architecture and dataset count for `claim`: its model id and
    dataset, and its architecture when it names one (a ResFace-R50 claim never counts an R18 run)."""
    return claim["model"] == model_id and claim["dataset"] == dataset and claim.get("arch") in (None, arch)


def seed_std(accs: np.ndarray) -> float | None:
    """Sample standard deviation (ddof=1) of per-run accuracies; None for a single run."""
    accs = np.asarray(accs, float)
    return float(accs.std(ddof=1)) if accs.size > 1 else None


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f}"


def accuracy_table(
    records: list[RunRecord], claims: list[dict[str, Any]], which: str = "last"
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows = models, columns = datasets; each cell: mean, std, n, CI, claim and difference."""
    df = runs_frame(records)
    if df.empty or f"acc_{which}" not in df:
        return [], []
    datasets = list(dict.fromkeys(df["dataset"]))
    rows = []
    for model in dict.fromkeys(df["model"]):
        cells = {}
        for d in datasets:
            sub = df[(df.model == model) & (df.dataset == d)]
            if sub.empty:
                cells[d] = None
                continue
            recs = [r for r in records if r.id in set(sub["run"])]
            values, _ = seed_values(recs, which)  # one per seed, a seed's folds pooled: what the CI resamples too
            ci = pooled_ci(recs, which)
            claim = next((c for c in claims if c.get("metric", "accuracy") == "accuracy"
                          and claim_matches(c, sub["model_id"].iloc[0], sub["arch"].iloc[0], d)), None)
            mean = float(values.mean())
            cells[d] = {
                "mean": mean, "std": seed_std(values), "n": int(values.size), "folds": len({r.job.fold for r in recs}),
                "ci": ci, "claim": claim["value"] / 100 if claim else None, "source": claim["source"] if claim else None,
                "diff": (mean - claim["value"] / 100) if claim else None,
            }
        rows.append({"model": model, "cells": cells})
    return datasets, rows


def metric_rows(records: list[RunRecord], which: str = "last") -> list[dict[str, Any]]:
    """Per (model, dataset): mean balanced accuracy, macro-F1, per-class recall, params, GMACs."""
    out = []
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        if r.complete:
            groups.setdefault((r.label, r.job.dataset.id), []).append(r)
    for (model, dataset), recs in groups.items():
        ms = [r.metrics() for r in recs]
        tests = [m["test"][which] for m in ms if "test" in m and which in m["test"]]
        if not tests:
            continue
        classes = ms[0]["classes"]
        recall = {c: _nanmean([t["per_class_recall"].get(c) for t in tests]) for c in classes}
        prof = metrics_cost(ms[0])
        from ferbench.published_sizes import size_claim

        out.append({
            "size_claim": size_claim(recs[0].job.model.arch),
            "model": model, "dataset": dataset, "n": len(tests),
            "accuracy": float(np.mean([t["accuracy"] for t in tests])),
            "balanced_accuracy": float(np.mean([t["balanced_accuracy"] for t in tests])),
            "macro_f1": float(np.mean([t["macro_f1"] for t in tests])),
            "ece": float(np.mean([t["ece"] for t in tests])),
            "recall": recall, "classes": classes,
            "confusion": np.sum([np.array(t["confusion"]) for t in tests], axis=0),
            "params": prof.get("params"), "gmacs": prof.get("gmacs"), **dict(zip(("latency_ms", "latency_iqr_ms"), _latency(ms))),
            "input_size": prof.get("input_size"), "records": recs,
        })
    return out


def _latency(metrics: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(median, IQR) in ms of the batch-1 CPU latency: the median over the seeds' medians, and the
    median of their interquartile ranges (`cost.latency`, torch.utils.benchmark). Records made before
    the spread was recorded (2026-12-04) give (None, None): a number without its spread is left out."""
    pairs = [(c.get("latency_ms_cpu"), c.get("latency_iqr_ms_cpu")) for c in map(metrics_cost, metrics)]
    pairs = [(m, q) for m, q in pairs if isinstance(m, (int, float)) and isinstance(q, (int, float))]
    if not pairs:
        return None, None
    return float(np.median([m for m, _ in pairs])), float(np.median([q for _, q in pairs]))


def _nanmean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def cross_table(records: list[RunRecord], which: str = "last") -> list[dict[str, Any]]:
    """Per (model, training dataset, cross target): the target's test accuracy (mean and std over
    seeds and folds), the images scored and the target classes the map dropped."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        if not r.complete:
            continue
        for target, entry in (r.metrics().get("cross") or {}).items():
            if which in entry:
                groups.setdefault((r.label, r.job.dataset.id, target), []).append(entry)
    out = []
    for (model, dataset, target), entries in groups.items():
        accs = np.array([e[which]["accuracy"] for e in entries])
        out.append({"model": model, "trained_on": dataset, "target": target, "target_dataset": entries[0]["dataset"],
                    "mean": float(accs.mean()), "std": seed_std(accs),
                    "n": len(accs), "images": entries[0]["images"], "classes": entries[0]["classes"],
                    "dropped": entries[0]["dropped_classes"],
                    "balanced_accuracy": float(np.mean([e[which]["balanced_accuracy"] for e in entries]))})
    return out
