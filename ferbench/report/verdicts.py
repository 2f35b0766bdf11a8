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

Each verdict says what kind of check it is. *Retrained*: runs trained by ferbench, as above.
*Released weights re-evaluated*: a run with `train.epochs: 0` and `weights:` evaluates the authors'
own trained file, which carries no training randomness; only the conditions of the evaluation block it
(input size, colour, data, protocol; how the authors trained is theirs), and the re-evaluated accuracy
is compared with the claim at the precision the claim was stated (66 % means 65.5-66.5), widened by
the test images whose pixels are known to be approximate in the data used here (each could flip).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ferbench.hub import weights_label
from ferbench.records import RunRecord
from ferbench.report.tables import claim_matches, pooled_ci, runs_frame, seed_std

BLOCKING = ("input_size", "in_chans", "epochs", "pretraining", "labels", "data", "protocol", "extra_data")
RELEASED_BLOCKING = ("input_size", "in_chans", "data", "protocol")  # how the authors trained is not ours to match
RELEASED, RETRAINED = "released weights re-evaluated", "retrained"
LABELS_OF_LOSS = {"ce": "hard", "ldl": "distribution", "sampled": "distribution", "multi_target": "distribution"}
COLUMN_OF_SELECTION = {"last": "last", "best-val": "best", None: "last"}


def run_conditions(rec: RunRecord, n_seeds: int, which: str) -> dict[str, Any]:
    """The claim-comparable conditions of one experiment, read from a run's job record."""
    j = rec.job
    t = j.train
    subset = j.dataset.subset_sizes()
    return {
        "input_size": t.input_size, "in_chans": t.in_chans, "epochs": t.epochs,
        "pretraining": weights_label(j.model.weights) if j.model.weights else "none",
        "labels": LABELS_OF_LOSS.get(t.loss, t.loss),
        "data": "full" if not subset else "subset (" + ", ".join(f"{k} {v}" for k, v in subset.items()) + ")",
        "selection": "last" if which == "last" else "best-val", "seeds": n_seeds,
        "protocol": dataset_protocol(j.dataset.name, j.dataset.options), "extra_data": "none", "kind": run_kind(rec),
    }


def run_kind(rec: RunRecord) -> str:
    """Released weights re-evaluated (`train.epochs: 0` with `weights:`: nothing trained here) or retrained."""
    return RELEASED if rec.job.train.epochs == 0 and rec.job.model.weights else RETRAINED


def dataset_protocol(name: str, options: dict[str, Any]) -> str | None:
    """The run's dataset protocol: its `protocol` option, or the loader's default for it."""
    if "protocol" in options:
        return str(options["protocol"])
    from ferbench.data import get_kind

    try:
        field = get_kind(name).options.model_fields.get("protocol")
    except Exception:  # noqa: BLE001  (a dataset this installation does not know: no protocol to compare)
        return None
    return None if field is None else str(field.default)


def differences(paper: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The stated conditions of the claim that the run does not share, as `name: paper X vs run Y`
    (for released weights only those of the evaluation)."""
    out = []
    for name in RELEASED_BLOCKING if run.get("kind") == RELEASED else BLOCKING:
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
    if run.get("kind") == RELEASED:  # the file is the checkpoint the authors selected: no selection of ours to compare
        return [f"the paper's number is test-selected ({sel}); the released file is that checkpoint, re-evaluated on "
                "the same images"] if sel in ("best-test", "max-of-seeds") else []
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
    keys = {r.id: (r.job.model.id, r.job.model.arch, r.job.dataset.id)
            for r in records if r.complete}  # (model id, arch, dataset)
    matched = [r for r in records if r.id in keys and claim_matches(claim, *keys[r.id])]
    if not matched:  # say why: the model ran, but as another architecture, or not at all
        ran = sorted({a for m, a, d in keys.values() if m == claim["model"] and d == claim["dataset"]})
        here = sorted({m for m, a, d in keys.values() if d == claim["dataset"]})  # model ids, as the tables name rows
        why = (f"{claim['model']} ran as {', '.join(ran)}, the claim is about {claim['arch']}" if ran
               else f"no complete run of {claim['model']} on {claim['dataset']}"
               + (f" (runs here on {claim['dataset']}: {', '.join(here)})" if here else ""))
        return [{**base, "verdict": "no matching run", "why": why, "label": None, "mean": None, "ci": None, "kind": None,
                 "diff": None, "differs": [], "caveats": [], "paper_rule": None, "std": None, "cost": None}]
    rows = []
    for label in dict.fromkeys(r.label for r in matched):
        recs = [r for r in matched if r.label == label]
        kind = run_kind(recs[0])  # released weights are evaluated as given: no epoch to select
        which = "last" if kind == RELEASED else COLUMN_OF_SELECTION.get(claim.get("conditions", {}).get("selection"), "last")
        sub = df[df.run.isin({r.id for r in recs})]
        accs = sub[f"acc_{which}"].to_numpy(float)
        run = run_conditions(recs[0], len(recs), which)
        paper = claim.get("conditions", {})
        mean = float(np.mean(accs))
        differs = differences(paper, run)
        if kind == RELEASED:
            ci, direction, why = released_check(claim, mean, recs[0])
            rule = None
        else:
            ci = pooled_ci(recs, which)
            direction = ci_verdict(base["claim"], ci) if ci else None
            why, rule = _plainly(differs, direction), paper_rule(paper.get("selection"), recs, accs, base["claim"])
        rows.append({**base, "label": label, "mean": mean, "std": seed_std(accs), "ci": ci, "diff": mean - base["claim"],
                     "n": len(recs), "cost": model_cost(sub), "kind": kind,
                     "verdict": "not comparable" if differs or direction is None else direction,
                     "direction": direction, "differs": differs, "caveats": caveats(paper, run),
                     "why": why, "selection": run["selection"], "paper_rule": rule})
    return rows


def claim_resolution(value: float, resolution: float | None) -> float:
    """The last digit a claim states, in points: as given, else 1 for a whole number, else its decimals.

    >>> claim_resolution(66.0, None), claim_resolution(70.02, None), claim_resolution(66.0, 0.1)
    (1.0, 0.01, 0.1)
    """
    if resolution is not None:
        return resolution
    if float(value).is_integer():
        return 1.0
    return 10.0 ** -len(repr(float(value)).split(".")[1])


def released_interval(claim: float, resolution: float, acc: float, margin: float) -> tuple[tuple[float, float], str]:
    """(the re-evaluated accuracy ± margin, verdict) for released weights (all fractions): `reproduced`
    when that range meets the claim's stated range claim ± resolution / 2, else `below` / `above`.

    >>> released_interval(0.66, 0.01, 0.6546, 0.0036)[1], released_interval(0.71, 0.01, 0.6542, 0.0045)[1]
    ('reproduced', 'below')
    """
    lo, hi = acc - margin, acc + margin
    c_lo, c_hi = claim - resolution / 2, claim + resolution / 2
    verdict = "reproduced" if lo <= c_hi and hi >= c_lo else ("below" if hi < c_lo else "above")
    return (lo, hi), verdict


def released_check(claim: dict[str, Any], acc: float, rec: RunRecord) -> tuple[tuple[float, float], str, str]:
    """The released-weights verdict for one record: its interval, direction and the sentence behind it."""
    resolution = claim_resolution(claim["value"], claim.get("resolution"))
    n_test = len(rec.predictions()["test.labels"])
    inexact = int(((rec.manifest.get("data_notes") or {}).get("inexact_pixels") or {}).get("test", 0))
    ci, direction = released_interval(claim["value"] / 100, resolution / 100, acc, inexact / n_test)
    lo, hi = claim["value"] - resolution / 2, claim["value"] + resolution / 2
    why = (f"released weights re-evaluated (no training randomness): {100 * acc:.2f} % against the claim as stated, "
           f"{lo:g}-{hi:g} %")
    why += (f"; {inexact} of {n_test:,} test images have approximate pixels here, so the re-evaluation is "
            f"±{100 * inexact / n_test:.2f} points" if inexact else "; every test image is exact here")
    return ci, direction, why


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
