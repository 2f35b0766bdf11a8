"""A verdict for every claim, computed from run records, never written by hand.

A claim (spec `claims[]`) is matched to the runs of its model id on its dataset whose architecture is
the claim's; runs of another architecture never count (the page says why none matched). For each
experiment that matches (one condition hash) the verdict is

- `not comparable` when a condition the claim states (input size, colour, epochs, pretraining,
  labels, data) differs from the runs' records, listed as `paper X vs run Y`;
- otherwise `reproduced` when the claim lies inside the 95 % CI of the reproduction's seed-mean
  accuracy (a bootstrap over test images, each image's seeds kept together), or `below` / `above`
  when the CI lies entirely below / above the claim, with the distance.

The selection rule and the number of seeds are reported beside the verdict (a paper that selects on
the test set or shows the best of several runs is biased upward) but do not block it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ferbench.hub import weights_label
from ferbench.records import RunRecord
from ferbench.report.tables import claim_matches, pooled_ci, runs_frame, seed_std

BLOCKING = ("input_size", "in_chans", "epochs", "pretraining", "labels", "data")
LABELS_OF_LOSS = {"ce": "hard", "ldl": "distribution", "sampled": "distribution", "multi_target": "distribution"}
COLUMN_OF_SELECTION = {"last": "last", "best-val": "best", None: "last"}


def run_conditions(rec: RunRecord, n_seeds: int, which: str) -> dict[str, Any]:
    """The claim-comparable conditions of one experiment, read from a run's job record."""
    j = rec.job["job"]
    t = j["train"]
    subset = {k: v for k, v in (j["dataset"].get("subset") or {}).items() if v}
    return {
        "input_size": t["input_size"], "in_chans": t["in_chans"], "epochs": t["epochs"],
        "pretraining": weights_label(j["model"]["weights"]) if j["model"].get("weights") else "none",
        "labels": LABELS_OF_LOSS.get(t["loss"], t["loss"]),
        "data": "full" if not subset else "subset (" + ", ".join(f"{k} {v}" for k, v in subset.items()) + ")",
        "selection": "last" if which == "last" else "best-val", "seeds": n_seeds,
    }


def differences(paper: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The stated conditions of the claim that the run does not share, as `name: paper X vs run Y`."""
    out = []
    for name in BLOCKING:
        want, got = paper.get(name), run[name]
        if want is None:
            continue
        same = (want == "none") == (got == "none") if name == "pretraining" else want == got
        if not same:
            out.append(f"{name.replace('_', ' ')}: paper {want} vs run {got}")
    return out


def caveats(paper: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Selection and seed differences: shown, not blocking."""
    out = []
    sel = paper.get("selection")
    if sel in ("best-test", "max-of-seeds"):
        out.append(f"the paper's number is test-selected ({sel}); the run's is {run['selection']}")
    elif sel and sel != run["selection"]:
        out.append(f"selection: paper {sel} vs run {run['selection']}")
    if paper.get("seeds") and paper["seeds"] != run["seeds"]:
        out.append(f"seeds: paper {paper['seeds']} vs run {run['seeds']}")
    return out


def ci_verdict(claim: float, ci: tuple[float, float]) -> str:
    """reproduced / below / above: where the claim lies against the reproduction's CI (fractions)."""
    lo, hi = ci
    return "reproduced" if lo <= claim <= hi else ("below" if hi < claim else "above")


def claim_verdicts(claims: list[dict[str, Any]], records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per (claim, matching experiment); a claim no run matches gets one row saying why."""
    df = runs_frame(records)
    out = []
    for claim in claims:
        if claim.get("metric", "accuracy") != "accuracy":
            continue
        out += _verdicts_for(claim, records, df)
    return out


def _verdicts_for(claim: dict[str, Any], records: list[RunRecord], df: Any) -> list[dict[str, Any]]:
    base = {"model": claim["model"], "arch": claim.get("arch"), "dataset": claim["dataset"], "claim": claim["value"] / 100,
            "source": claim["source"]}
    keys = {r.id: (r.job["job"]["model"]["id"], r.job["job"]["model"]["arch"], r.job["job"]["dataset"]["id"])
            for r in records if r.complete}  # (model id, arch, dataset)
    matched = [r for r in records if r.id in keys and claim_matches(claim, *keys[r.id])]
    if not matched:  # say why: the model ran, but as another architecture, or not at all
        ran = sorted({a for m, a, d in keys.values() if m == claim["model"] and d == claim["dataset"]})
        here = sorted({m for m, a, d in keys.values() if d == claim["dataset"]})  # model ids, as the tables name rows
        why = (f"{claim['model']} ran as {', '.join(ran)}, the claim is about {claim['arch']}" if ran
               else f"no complete run of {claim['model']} on {claim['dataset']}"
               + (f" (runs here on {claim['dataset']}: {', '.join(here)})" if here else ""))
        return [{**base, "verdict": "no matching run", "why": why, "label": None, "mean": None, "ci": None,
                 "diff": None, "differs": [], "caveats": [], "paper_rule": None, "std": None, "cost": None}]
    which = COLUMN_OF_SELECTION.get(claim.get("conditions", {}).get("selection"), "last")
    rows = []
    for label in dict.fromkeys(r.label for r in matched):
        recs = [r for r in matched if r.label == label]
        sub = df[df.run.isin({r.id for r in recs})]
        accs = sub[f"acc_{which}"].to_numpy(float)
        run = run_conditions(recs[0], len(recs), which)
        paper = claim.get("conditions", {})
        mean, ci = float(np.mean(accs)), pooled_ci(recs, which)
        direction = ci_verdict(base["claim"], ci) if ci else None
        differs = differences(paper, run)
        rows.append({**base, "label": label, "mean": mean, "std": seed_std(accs), "ci": ci, "diff": mean - base["claim"],
                     "n": len(recs), "cost": model_cost(sub),
                     "verdict": "not comparable" if differs or direction is None else direction,
                     "direction": direction, "differs": differs, "caveats": caveats(paper, run),
                     "why": _plainly(differs, direction), "selection": run["selection"],
                     "paper_rule": paper_rule(paper.get("selection"), recs, accs, base["claim"])})
    return rows


def model_cost(runs: Any) -> dict[str, Any] | None:
    """Params (M) and GMACs at the runs' input size, as the runs measured them (first run; one experiment
    shares one model and input size)."""
    row = runs.iloc[0]
    if pd.isna(row.get("params")) or pd.isna(row.get("gmacs")):
        return None
    return {"params_m": float(row["params"]) / 1e6, "gmacs": float(row["gmacs"]), "input_size": int(row["input_size"])}


def paper_rule(selection: str | None, recs: list[RunRecord], accs: np.ndarray, claim: float) -> dict[str, Any] | None:
    """The reproduction under the paper's own test-selected rule, labelled as such: `best-test` = each
    seed's best per-epoch test accuracy (history.csv's test_acc, recorded with eval.test_each_epoch),
    mean over seeds; `max-of-seeds` = the best seed's accuracy. Its 95 % interval is a Wilson interval
    over the test images (seeds pooled); the number is biased upward by the selection, like the paper's."""
    from ferbench.metrics import wilson_ci

    if selection not in ("best-test", "max-of-seeds"):
        return None
    n_test = len(recs[0].predictions()["test.labels"])
    if selection == "max-of-seeds":
        value, n = float(accs.max()), n_test
    else:
        best = [max((row["test_acc"] for row in r.history() if "test_acc" in row), default=None) for r in recs]
        if any(b is None for b in best):
            return {"rule": selection, "value": None, "note": "per-epoch test accuracy not recorded (eval.test_each_epoch)"}
        value, n = float(np.mean(best)), n_test * len(recs)
    ci = wilson_ci(round(value * n), n)
    return {"rule": selection, "value": value, "ci": ci, "diff": value - claim, "verdict": ci_verdict(claim, ci),
            "note": "test-selected: biased upward, shown only to compare with the paper's own rule"}


def _plainly(differs: list[str], direction: str | None) -> str:
    """The sentence a reader needs: what the verdict rests on."""
    if direction is None:
        return "no confidence interval (the runs' test predictions differ in size)"
    if differs:
        return f"the runs differ from the paper's conditions; at these conditions the CI lies {direction} the claim" \
            if direction != "reproduced" else "the runs differ from the paper's conditions; the claim lies inside the CI anyway"
    if direction == "reproduced":
        return "run at the paper's stated conditions; the claim lies inside the 95 % CI"
    return (f"run at the paper's stated conditions and the result is {direction} the claim: "
            "a different outcome under the same conditions")
