"""A verdict for every claim, computed from run records, never written by hand.

A claim (spec `claims[]`) is matched to the runs of its model id on its dataset whose architecture is
the claim's; runs of another architecture never count (the page says why none matched). For each
experiment that matches (one condition hash) the verdict is

- `not comparable` when a condition the claim states (input size, colour, epochs, pretraining kind,
  labels, data, protocol) differs from the runs' records, listed as `paper X vs run Y`;
- otherwise decided by where the claim lies among single runs of the recipe. A paper's number and
  a reproduction are measured on the same test images, so what separates them is training
  randomness (seed, data order, augmentation, hardware): the unit is the run. The interval is a 95 %
  prediction interval for one run from the seeds (`metrics.single_run_interval`), taken at the
  paper's selection rule where the records allow it (its best test epoch from the per-epoch test
  accuracies; the best of its `seeds` runs as the maximum of that many draws). `reproduced`: the
  claim lies inside it; `below` / `above`: outside; `inconclusive`: fewer than 3 seeds with the
  claim inside their interval, or one run's interval so wide (over ±5 points) that no claim inside
  it is confirmed or refuted. The row also gives P(a run of the recipe reaches the claim) and, when
  inconclusive, how many seeds would settle it.

Each verdict says what kind of check it is. *Retrained*: runs trained by ferbench, as above.
*Released weights re-evaluated*: a run with `train.epochs: 0` and `weights:` evaluates the authors'
own trained file, which carries no training randomness; only the conditions of the evaluation block it
(input size, colour, data, protocol; how the authors trained is theirs), and the re-evaluated accuracy
is compared with the claim at the precision the claim was stated (66 % means 65.5-66.5), widened by
the test images whose pixels are known to be approximate in the data used here (each could flip).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ferbench.hub import weights_label
from ferbench.records import RunRecord
from ferbench.metrics import probability_run_reaches, seeds_to_settle, single_run_interval
from ferbench.report.tables import claim_matches, runs_frame, seed_std, seed_values

BLOCKING = ("input_size", "in_chans", "epochs", "pretraining", "labels", "data", "protocol", "extra_data", "vote_table",
            "test_images")
RELEASED_BLOCKING = ("input_size", "in_chans", "data", "protocol", "test_images")  # how the authors trained is theirs
RELEASED, RETRAINED = "released weights re-evaluated", "retrained"
LABELS_OF_LOSS = {"ce": "hard", "ldl": "distribution", "sampled": "distribution", "multi_target": "distribution"}
COLUMN_OF_SELECTION = {"last": "last", "best-val": "best", None: "last"}


def run_conditions(rec: RunRecord, n_seeds: int, which: str) -> dict[str, Any]:
    """The claim-comparable conditions of one experiment, read from a run's job record and manifest."""
    j = rec.job
    t = j.train
    notes = rec.manifest.get("data_notes") or {}
    test = rec.metrics().get("test", {}).get("last") or {}
    return {
        "input_size": t.input_size, "in_chans": t.in_chans, "epochs": t.epochs,
        "pretraining": weights_label(j.model.weights) if j.model.weights else "none",
        "labels": LABELS_OF_LOSS.get(t.loss, t.loss), "data": data_condition(j.dataset.subset_sizes(), notes, j.dataset.options),
        "selection": "last" if which == "last" else "best-val", "seeds": n_seeds,
        "protocol": dataset_protocol(j.dataset.name, j.dataset.options), "extra_data": "none", "kind": run_kind(rec),
        "vote_table": notes.get("votes"), "test_images": int(np.asarray(test["confusion"]).sum()) if test else None,
    }


def data_condition(subset: dict[str, Any], notes: dict[str, Any], options: dict[str, Any]) -> str:
    """`full` (the dataset's standard training split, all of it), or what the run trained on instead: a
    subset, or the training split less a validation split carved out of it (RAF-DB, AffectNet, folder
    trees without a val split, FER-2013's carve-val protocol)."""
    if subset:
        return "subset (" + ", ".join(f"{k} {v}" for k, v in subset.items()) + ")"
    if "val_rule" in notes or options.get("protocol") == "carve-val":
        return "training split less a validation split carved from it"
    return "full"


PRETRAINING_KINDS = (("22k", "imagenet-22k"), ("21k", "imagenet-22k"), ("in1k", "imagenet-1k"), ("imagenet", "imagenet-1k"))


def pretraining_kind(label: str) -> str:
    """What a model started from, by kind: none, imagenet-1k, imagenet-22k, a file (.pt/.pth/.safetensors/
    .hdf5), or another dataset by name (`KDEF`). timm tags name the kind (`convnext_tiny.fb_in22k`).

    >>> [pretraining_kind(x) for x in ("none", "convnext_atto.d2_in1k", "imagenet-22k", "w.pth", "KDEF (then FER)")]
    ['none', 'imagenet-1k', 'imagenet-22k', 'file', 'kdef']
    """
    low = label.strip().lower()
    if low in ("none", ""):
        return "none"
    for tag, kind in PRETRAINING_KINDS:
        if tag in low:
            return kind
    if low.endswith((".pt", ".pth", ".safetensors", ".hdf5", ".h5", ".bin", ".ckpt")):
        return "file"
    return low.split()[0]


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
        want, got = paper.get(name), run.get(name)
        if want is None:
            continue
        same = pretraining_kind(str(want)) == pretraining_kind(got) if name == "pretraining" else want == got
        if not same:
            out.append(f"{name.replace('_', ' ')}: paper {want} vs run {'not recorded' if got is None else got}")
    return out


def caveats(paper: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Selection and seed differences: shown, not blocking."""
    out = []
    unstated = [f"{name.replace('_', ' ')} (run: {run[name]})" for name in ("vote_table", "test_images")
                if paper.get(name) is None and run.get(name) is not None and (name != "test_images" or run.get("vote_table"))]
    if unstated:  # FER+: which vote table and test set the paper used decides what its number means
        out.append("the paper does not state its " + " or ".join(unstated))
    sel = paper.get("selection")
    if run.get("kind") == RELEASED:  # the file is the checkpoint the authors selected: no selection of ours to compare
        if sel in ("best-test", "max-of-seeds"):
            out.append(f"the paper's number is test-selected ({sel}); the released file is that checkpoint, re-evaluated "
                       "on the same images")
        return out
    if sel in ("best-test", "max-of-seeds"):
        out.append(f"the paper's number is test-selected ({sel}); the run's is {run['selection']}")
    elif sel and sel != run["selection"]:
        out.append(f"selection: paper {sel} vs run {run['selection']}")
    return out  # the paper's seeds are not a caveat: the interval is for what its number is (one run, a mean, a best)


def ci_verdict(claim: float, ci: tuple[float, float]) -> str:
    """reproduced / below / above: where the claim lies against an interval (fractions)."""
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


EMPTY = {"label": None, "mean": None, "interval": None, "kind": None, "diff": None, "differs": [], "caveats": [],
         "std": None, "cost": None, "p_reach": None, "basis": None, "seeds_needed": None, "method": None, "n": 0}


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
        return [{**base, **EMPTY, "verdict": "no matching run", "why": why}]
    rows = []
    for label in dict.fromkeys(r.label for r in matched):
        recs = [r for r in matched if r.label == label]
        kind = run_kind(recs[0])  # released weights are evaluated as given: no epoch to select
        paper = claim.get("conditions", {})
        which = "last" if kind == RELEASED else COLUMN_OF_SELECTION.get(paper.get("selection"), "last")
        sub = df[df.run.isin({r.id for r in recs})]
        accs = sub[f"acc_{which}"].to_numpy(float)
        run = run_conditions(recs[0], len({r.job.seed for r in recs}), which)
        differs = differences(paper, run)
        row = {**base, **EMPTY, "label": label, "n": run["seeds"], "cost": model_cost(sub), "kind": kind,
               "differs": differs, "caveats": caveats(paper, run), "selection": run["selection"]}
        if kind == RELEASED:
            mean = float(np.mean(accs))
            interval, direction, why = released_check(claim, mean, recs[0])
            row.update(mean=mean, std=seed_std(accs), interval=interval, basis="the released file, re-evaluated",
                       method="the re-evaluated accuracy ± the test images with approximate pixels")
        else:
            spread = run_spread(base["claim"], paper, recs, which)
            direction, why = spread.pop("direction"), spread.pop("why")
            row.update(spread)
            if "as the paper" in spread["basis"]:
                row["caveats"] = [c for c in row["caveats"] if "test-selected" not in c]  # matched: not a difference
        row["diff"] = row["mean"] - base["claim"]
        row["verdict"] = "not comparable" if differs else direction
        row["why"] = _plainly(differs, direction, why)
        rows.append(row)
    return rows


MIN_SEEDS = 3  # fewer cannot tell a claim inside the recipe's spread from a spread not yet seen
MAX_HALF_WIDTH = 0.05  # a single run's 95 % interval wider than +-5 points says the recipe itself is unstable
METHOD = "95 % prediction interval for one run of the recipe (Student t on the seeds, k - 1 df{extra})"


def run_spread(claim: float, paper: dict[str, Any], recs: list[RunRecord], which: str) -> dict[str, Any]:
    """The retrained verdict: where the claim lies in the distribution of single runs of the recipe.

    A paper's number is one run (or the best of `seeds` runs, or a run's best test epoch), measured on
    the same test images as ours, so the interval holds training randomness: a prediction interval
    for one run from the seeds (`metrics.single_run_interval`), taken at the paper's selection rule
    where the records allow (best-test from per-epoch test accuracies; max-of-seeds as the best of
    the paper's `seeds` draws). Where a run's test images are a subset, test sampling is added."""
    sel = paper.get("selection")
    basis, values, n_test = {"last": "last epoch", "best": "best validation epoch"}[which], *seed_values(recs, which)
    if sel == "best-test":
        best, _ = seed_values(recs, "best-test")
        if not np.isnan(best).any():
            basis, values = "best test epoch (test-selected, as the paper)", best
    best_of = int(paper.get("seeds") or 1) if sel == "max-of-seeds" else 1
    mean_of = int(paper.get("seeds") or 1) if sel != "max-of-seeds" else 1
    if best_of > 1:
        basis += f", best of {best_of} runs (as the paper)"
    if mean_of > 1:
        basis += f", mean of {mean_of} runs (as the paper)"
    mean, std = float(values.mean()), seed_std(values)
    subset = recs[0].job.dataset.subset_sizes()
    extra = mean * (1 - mean) / n_test if "test" in subset else 0.0
    method = METHOD.format(extra=", plus test-image sampling: the runs test a subset" if extra else "")
    interval = single_run_interval(values, 0.95, best_of, extra, mean_of)
    p_reach = probability_run_reaches(values, claim, best_of, extra, mean_of)
    out = {"mean": mean, "std": std, "interval": interval, "p_reach": p_reach, "basis": basis, "method": method}
    k = len(values)
    if interval is None:
        return {**out, "seeds_needed": MIN_SEEDS, "direction": "inconclusive",
                "why": f"one seed says nothing of the recipe's run-to-run spread: run at least {MIN_SEEDS}"}
    direction = ci_verdict(claim, interval)
    half = (interval[1] - interval[0]) / 2
    out["interval"] = (max(0.0, interval[0]), min(1.0, interval[1]))  # an accuracy: the t model's tails are cut
    if direction != "reproduced":
        return {**out, "direction": direction, "why": f"the claim lies outside the 95 % interval for one run "
                f"({k} seeds), P(a run reaches it) = {p_reach:.3f}"}
    if k >= MIN_SEEDS and half <= MAX_HALF_WIDTH:
        return {**out, "direction": "reproduced", "why": f"the claim lies inside the 95 % interval for one run "
                f"({k} seeds), P(a run reaches it) = {p_reach:.2f}"}
    settle = seeds_to_settle(mean, std, claim, 0.95, best_of, extra, mean_of=mean_of)
    said = (f"{k} seeds: the claim lies inside their wide interval (±{100 * half:.1f} points)" if k < MIN_SEEDS else
            f"the runs spread too widely (one run's interval ±{100 * half:.1f} points) to confirm or refute a claim inside it")
    narrow = 1.96 * math.sqrt(std ** 2 + extra) <= MAX_HALF_WIDTH  # would many seeds give a narrow enough interval
    needed: int | None = settle or (MIN_SEEDS if narrow or k < MIN_SEEDS else None)
    if settle:
        hint = f"; {settle} seeds would show it {'below' if claim > mean else 'above'} if this spread holds"
    elif narrow:
        hint = f"; {MIN_SEEDS} seeds would confirm it if this spread holds"
    elif k < MIN_SEEDS:
        hint = f"; run at least {MIN_SEEDS} seeds to measure the spread"
    else:
        hint = "; more seeds would not narrow one run's spread: the recipe itself is unstable"
    return {**out, "seeds_needed": needed, "direction": "inconclusive",
            "why": f"{said}, P(a run reaches it) = {p_reach:.2f}{hint}"}


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


def _plainly(differs: list[str], direction: str, why: str) -> str:
    """The sentence a reader needs: what the verdict rests on."""
    if differs:
        return f"the runs differ from the paper's stated conditions (below), so no verdict on the claim; at these conditions: {why}"
    return why
