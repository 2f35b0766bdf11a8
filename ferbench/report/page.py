"""Building a report page: run records -> the page's context (tables, verdicts, conditions) and figures.

Reads `runs/<spec>/spec.yaml` (the claims and description the run was made with) and the job
folders; never imports the engine, never trains, never writes (`render` writes).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ferbench.errors import FerbenchError
from ferbench.fileio import MAX_SPEC_BYTES, read_text_bounded
from ferbench.hub import weights_label
from ferbench.metrics import kl_per_sample, softmax
from ferbench.records import SPEC_FILE, RunRecord, discover
from ferbench.specfile import parse_yaml
from ferbench.report.figures import (class_distribution_figure, confusion_figure, curves_figure,
                                      label_distribution_figure, side_by_side_figure)
from ferbench.report.sections import describe_run
from ferbench.report.tables import accuracy_table, cross_table, fold_table, majority_rate, metric_rows, paired_rows
from ferbench.report.verdicts import claim_verdicts


# how each `train.normalize` value scales the pixels a network sees (the conditions row says which)
PIXEL_SCALING = {"none": "pixels in [0, 1]", "half": "pixels in [-1, 1]",
                 "imagenet": "pixels standardised by ImageNet's per-channel mean and std"}


def spec_folders(target: str | None, runs_dir: Path) -> list[Path]:
    if target is None:
        if not runs_dir.is_dir():
            raise FerbenchError(f"{runs_dir}: no runs directory (run `ferbench run SPEC` first, or pass --runs-dir)")
        found = sorted(p for p in runs_dir.iterdir() if p.is_dir() and any(p.glob("*/job.yaml")))
        if not found:
            raise FerbenchError(f"{runs_dir}: no run records found")
        return found
    p = Path(target)
    if p.is_dir() and any(p.glob("*/job.yaml")):
        return [p]
    if p.is_dir() and any(p.glob("*/*/job.yaml")):  # a runs folder, e.g. a page's published records/
        return sorted(q for q in p.iterdir() if q.is_dir() and any(q.glob("*/job.yaml")))
    q = runs_dir / target
    if q.is_dir() and any(q.glob("*/job.yaml")):
        return [q]
    raise FerbenchError(f"no run records for {target!r} (looked in {p} and {q})")


def conditions(records: list[RunRecord]) -> list[dict[str, str]]:
    """What every run was made under, one row per distinct (model, dataset) condition."""
    rows, seen = [], set()
    for r in records:
        j = r.job
        t, m, ds = j.train, j.model, j.dataset
        env = r.manifest.get("environment", {})
        row = {
            "model": r.label, "dataset": ds.id, "arch": m.arch,
            "profile": (j.profile or "none") if "profile" in j.model_fields_set else "not recorded",
            "recipe": j.recipe,
            "input": f"{t.input_size}x{t.input_size}, {t.in_chans} ch, {PIXEL_SCALING.get(t.normalize, f'pixels scaled by {t.normalize}')}",
            "epochs": str(t.epochs),
            "optimizer": f"{t.optimizer} lr {t.lr:g}, bs {t.batch_size}, {t.schedule}" if t.epochs else "none (weights evaluated as given)",
            "loss": t.loss + (f" ({t.ldl_source})" if t.loss == "ldl" else "") + (f", ls {t.label_smoothing:g}" if t.label_smoothing else ""),
            "pretraining": (f"{weights_label(m.weights)} ({len(r.manifest.get('pretrained', {}).get('loaded', []))} tensors)"
                            if m.weights else "none (random init)"),
            "tta": j.eval.tta,
            "options": ", ".join(f"{k}={v}" for k, v in m.options.items()) or "defaults",
            "data": (", ".join(f"{k} {v}" for k, v in ds.subset_sizes().items()) or "no subset")
            + "".join(f"; {k} {v}" for k, v in ds.options.items() if k != "fold"),
            "device": device_label(env, r.manifest.get("precision") or {}),
        }
        key = tuple(row.values())
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def device_label(env: dict[str, Any], precision: dict[str, Any]) -> str:
    """The device and, where it is not plain fp32 eager, how it computed ("NVIDIA H200, bf16 autocast, CUDA graphs")."""
    parts = [env.get("gpu") or env.get("device", "?")]
    if precision.get("autocast", "off") != "off":
        parts.append(f"{precision['autocast']} autocast")
    if precision.get("grad_scaler"):
        parts.append("loss scaling")
    if precision.get("cuda_graphs"):
        parts.append("CUDA graphs")
    return ", ".join(parts)


def fig_name(kind: str, *parts: str) -> str:
    """A safe file name for a figure: ids are sanitised (records may come from anywhere) and hashed."""
    slug = "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", p)[:40] for p in parts)
    digest = hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:6]
    return f"{kind}_{slug}_{digest}.png"


def read_spec_snapshot(path: Path) -> tuple[dict[str, Any], str | None]:
    """runs/<spec>/spec.yaml (description and claims) and what is wrong with it, if anything: a
    damaged snapshot leaves the page without claims and says so, never without its results."""
    from pydantic import TypeAdapter, ValidationError

    from ferbench.spec import Claim

    if not path.exists():
        return {}, None
    try:
        spec = parse_yaml(read_text_bounded(path, MAX_SPEC_BYTES))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return {}, f"unreadable ({type(e).__name__}): description and claims left out"
    if not isinstance(spec, dict):
        return {}, "not a mapping: description and claims left out"
    try:
        claims = [c.model_dump() for c in TypeAdapter(list[Claim]).validate_python(spec.get("claims", []))]
    except ValidationError as e:
        return {"description": str(spec.get("description", ""))}, f"claims invalid ({e.error_count()} errors): claims left out"
    models = [m["id"] for m in spec.get("models", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
    return {"description": str(spec.get("description", "")), "claims": claims, "model_order": models}, None


def build_context(folder: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    unreadable: list[dict[str, str]] = []
    records = discover(folder, unreadable)
    spec, spec_problem = read_spec_snapshot(folder / SPEC_FILE)
    if spec_problem:
        unreadable.append({"run": SPEC_FILE, "status": "unreadable", "reason": spec_problem})
    claims = spec.get("claims", [])
    order = {m: i for i, m in enumerate(spec.get("model_order", []))}  # rows in the spec's order, not the folders'
    records.sort(key=lambda r: order.get(r.job.model.id, len(order)))
    figs: dict[str, bytes] = {}
    tables = {}
    complete = [r for r in records if r.complete]
    majority = {d: majority_rate([r for r in complete if r.job.dataset.id == d]) for d in dict.fromkeys(r.job.dataset.id for r in complete)}
    for which in ("last", "best"):
        datasets, rows = accuracy_table(records, claims, which)
        tables[which] = {"datasets": datasets, "rows": rows, "majority": majority}
    folds = {which: fold_table(records, which) for which in ("last", "best")}
    groups = metric_rows(records, "last")
    for g in groups:
        name = fig_name("confusion", g["model"], g["dataset"])
        figs[name] = confusion_figure(g["confusion"], g["classes"], f"{g['model']} on {g['dataset']} (test, {g['n']} seeds summed)")
        g["figure"] = name
        g["label_figure"] = _label_figure(g, figs)
    data_figs = []
    seen_ds = set()
    for r in records:
        d = r.job.dataset.id
        counts = r.manifest.get("class_counts")
        if d in seen_ds or not counts:
            continue
        seen_ds.add(d)
        name = fig_name("classes", d)
        figs[name] = class_distribution_figure(counts, r.manifest["classes"], f"{d}: images per class and split")
        data_figs.append({"dataset": d, "figure": name})
        cmp_counts = r.manifest.get("data_notes", {}).get("fer2013_vs_ferplus")
        if cmp_counts:
            # by name: the manifest is written with sorted keys, so "FER+ ..." comes back before "FER-2013 ..."
            ln = next(k for k in cmp_counts if k.startswith("FER-2013"))
            rn = next(k for k in cmp_counts if k.startswith("FER+"))
            left, right = cmp_counts[ln], cmp_counts[rn]
            name = fig_name("fer_vs_ferplus", d)
            figs[name] = side_by_side_figure(
                left, right, ln, rn, f"FER-2013 vs FER+ (fear {left.get('fear', 0):,} vs {right.get('fear', 0):,}; "
                f"FER+ non-faces {right.get('NF', 0):,})")
            data_figs.append({"dataset": f"{d}: FER-2013 vs FER+", "figure": name})
    curve_figs = []
    for d in sorted(seen_ds | {r.job.dataset.id for r in records if r.complete}):  # a set: sorted, so pages repeat
        hist = {}
        for r in records:
            if r.job.dataset.id == d and r.complete and (rows := r.history()):  # train.epochs: 0 has none
                hist.setdefault(r.label, []).append(rows)
        if hist:
            name = fig_name("curves", d)
            figs[name] = curves_figure(hist, f"{d}: accuracy per epoch (mean over seeds)")
            curve_figs.append({"dataset": d, "figure": name})
    problems = unreadable + [{"run": r.id, "status": r.status, "reason": r.manifest.get("failure", "no complete manifest (interrupted or still running)")}
                             for r in records if not r.complete]
    envs = environments(records)
    ctx = {
        "name": folder.name, "description": spec.get("description", ""), "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_runs": len(records), "n_complete": sum(r.complete for r in records), "tables": tables, "groups": groups,
        "majority": majority, "paired": paired_rows(records, claims, "last"),
        "data_figs": data_figs, "curve_figs": curve_figs, "problems": problems, "conditions": conditions(records),
        "environments": envs, "claims": claims, "verdicts": claim_verdicts(claims, records),
        "code_versions": code_versions(records), "records": records,
        "folds": folds, "leakage": leakage_rows(records), "cross": {w: cross_table(records, w) for w in ("last", "best")},
    }
    ctx["sections"] = describe_run(ctx)
    return ctx, figs


def environments(records: list[RunRecord]) -> list[dict[str, Any]]:
    """The distinct manifest environments of the records, in record order."""
    envs: list[dict[str, Any]] = []
    for r in records:
        e = r.manifest.get("environment")
        if e and e not in envs:
            envs.append(e)
    return envs


def code_version(environment: dict[str, Any]) -> str:
    """A manifest environment's code version as a page names it: the short commit, marked when the
    record was made from uncommitted edits (one home for that label)."""
    commit = str(environment.get("git_commit") or "unknown")[:12]
    return f"{commit} + uncommitted changes" if environment.get("git_dirty") else commit


def code_versions(records: list[RunRecord]) -> dict[str, list[str]]:
    """Which runs each code version made ({version: ["model/s0", ...]}), when a page must say so: its
    records come from several commits, or from a tree with uncommitted edits. Empty otherwise."""
    versions: dict[str, list[str]] = {}
    edited = False
    for r in records:
        env = r.manifest.get("environment") or {}
        edited = edited or bool(env.get("git_dirty"))
        versions.setdefault(code_version(env), []).append(f"{r.label}/s{r.job.seed}")
    return versions if len(versions) > 1 or edited else {}


def leakage_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Per dataset id: how many complete runs were tested on data not independent of their training
    data (their manifest's `data_notes.leakage`), with the first such note."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        note = r.manifest.get("data_notes", {}).get("leakage") if r.complete else None
        if note:
            fold = r.job.fold
            row = out.setdefault(r.job.dataset.id, {"dataset": r.job.dataset.id, "runs": 0,
                                                                  "note": note if fold is None else f"e.g. fold {fold}: {note}"})
            row["runs"] += 1
    return list(out.values())


def _label_figure(g: dict[str, Any], figs: dict[str, bytes]) -> str | None:
    """Predicted vs target distributions for runs whose test split has targets (votes)."""
    preds, targets = [], []
    for r in g["records"]:
        p = r.predictions()
        if "test.targets" in p and "test.last.logits" in p:
            preds.append(softmax(p["test.last.logits"]))
            targets.append(p["test.targets"])
    if not preds:
        return None
    pred, tgt = np.concatenate(preds), np.concatenate(targets)
    name = fig_name("labeldist", g["model"], g["dataset"])
    figs[name] = label_distribution_figure(tgt.mean(0), pred.mean(0), kl_per_sample(tgt, pred), g["classes"],
                                                   f"{g['model']} on {g['dataset']}: predicted vs annotator distributions (test)")
    return name


def page_summary(ctx: dict[str, Any]) -> dict[str, Any]:
    """What the reports index shows of a page (written beside it as verdicts.json)."""
    datasets = sorted({c["dataset"] for c in ctx["conditions"]})
    return {"name": ctx["name"], "description": ctx["description"], "generated": ctx["generated"], "datasets": datasets,
            "runs": ctx["n_runs"], "complete": ctx["n_complete"],
            "verdicts": [{k: v.get(k) for k in ("model", "arch", "dataset", "claim", "mean", "std", "n", "interval", "diff",
                                                "verdict", "why", "differs", "kind", "label", "basis", "method",
                                                "p_reach", "seeds_needed")}
                         for v in ctx["verdicts"]]}
