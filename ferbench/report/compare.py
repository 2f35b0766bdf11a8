"""`ferbench compare A B`: two model families (or model ids) side by side with paired statistics.

Pairs are runs of A and B from the same spec (so under one experiment's conditions: a 48x48 CPU
run is never paired with a 224x224 GPU run) on the same dataset and seed whose test labels are
identical. The statistics use the saved per-sample test predictions (last-epoch model), and their
unit is the test image: seeds are repeated measurements of the same images, not more images.
- per seed, an exact McNemar test (that seed's images are independent);
- across seeds, a paired permutation test (sign flips of each image's mean difference over the
  seeds) and a percentile-bootstrap 95 % CI of the accuracy difference that resamples test images,
  each image's seeds kept together (`metrics.paired_permutation_test`, `metrics.bootstrap_mean_ci`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ferbench.errors import FerbenchError
from ferbench.metrics import bootstrap_mean_ci, mcnemar_exact, paired_permutation_test, per_class_recall
from ferbench.report.sections import Section, condition_table
from ferbench.report.tables import metric_rows
from ferbench.records import RunRecord, discover


def _matches(rec: RunRecord, who: str) -> bool:
    """Whether a run is `who`: its model id, its arch, or its family as configured (`models.family_of`:
    an EmoNeXt with STN, SE and the attention loss off is a ConvNeXt, not an EmoNeXt)."""
    from ferbench.models import family_of

    m = rec.job.model
    return who in (m.id, m.arch, family_of(m.arch, m.options))


def paired_stats(ra: list[RunRecord], rb: list[RunRecord], classes: list[str], reps: int = 2000) -> dict[str, Any] | None:
    """acc(A) - acc(B) over the paired seeds with its image-level CI and permutation p-value, McNemar
    per seed, agreement and per-class recall differences."""
    by_seed = {r.job.seed: r for r in rb}
    ca, cb, pa, pb, ys, seeds = [], [], [], [], [], []
    for r in ra:
        other = by_seed.get(r.job.seed)
        if other is None:
            continue
        p, q = r.predictions(), other.predictions()
        if "test.last.logits" not in p or "test.last.logits" not in q or not np.array_equal(p["test.labels"], q["test.labels"]):
            continue
        y = p["test.labels"]
        a, b = p["test.last.logits"].argmax(1), q["test.last.logits"].argmax(1)
        ca.append(a == y)
        cb.append(b == y)
        pa.append(a)
        pb.append(b)
        ys.append(y)
        seeds.append(r.job.seed)
    if not ys:
        return None
    A, B = np.stack(ca), np.stack(cb)  # (seeds, images)
    diffs = A.astype(np.int8) - B.astype(np.int8)
    y, a, b = np.concatenate(ys), np.concatenate(pa), np.concatenate(pb)
    k = len(classes)
    rd = per_class_recall(y, a, k) - per_class_recall(y, b, k)
    return {
        "seeds": seeds, "n_images": int(A.shape[1]), "acc_diff": float(A.mean() - B.mean()),
        "acc_diff_ci95": list(bootstrap_mean_ci(diffs, reps)),
        "ci_resamples": f"test images, each image's {len(seeds)} seed(s) kept together ({reps} percentile-bootstrap replicates)",
        "paired_test": {"method": "paired permutation test, sign flips of each test image's mean difference over the seeds",
                        "unit": "test image", **paired_permutation_test(diffs)},
        "mcnemar_per_seed": [{"seed": s, **mcnemar_exact(x, z)} for s, x, z in zip(seeds, A, B)],
        "agreement": float((a == b).mean()),
        "recall_diff": {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, rd)},
    }


def compare(a: str, b: str, runs_dir: Path, dataset: str | None = None, published: Path | None = None) -> dict[str, Any]:
    """A against B on every dataset both ran on, from the complete records under `runs_dir`; when
    there is no record there at all (a fresh clone), from the records published under `published`
    (reports/<page>/records/), so a reader compares what the pages were rendered from."""
    unreadable: list[dict[str, str]] = []
    found = discover(runs_dir, unreadable) if runs_dir.exists() or published is None else []
    if published is not None and published.is_dir() and not found and not unreadable:
        found, runs_dir = discover(published, unreadable), published
    records = [r for r in found if r.complete]
    damaged = len(unreadable) + sum(r.status == "unreadable" for r in found)
    if dataset:
        records = [r for r in records if r.job.dataset.id == dataset]
    ra_all = [r for r in records if _matches(r, a)]
    rb_all = [r for r in records if _matches(r, b)]
    if not ra_all or not rb_all:
        missing = a if not ra_all else b
        raise FerbenchError(f"compare: no complete runs of {missing!r} under {runs_dir}"
                            + (f" on dataset {dataset!r}" if dataset else "") + " (model id, arch or family such as resface, emonext, convnext, resnet)"
                            + (f"; {damaged} damaged record(s) were left out: `ferbench report` lists why" if damaged else ""))
    from ferbench.report.page import conditions

    out: dict[str, Any] = {"a": a, "b": b, "records_from": str(runs_dir), "datasets": {}, "conditions": conditions(ra_all + rb_all)}
    for d in sorted({r.job.dataset.id for r in ra_all} & {r.job.dataset.id for r in rb_all}):
        rows = {g["model"]: g for g in metric_rows([r for r in ra_all + rb_all if r.job.dataset.id == d])}
        variants, recs_of = [], {}  # recs_of[side, model id]: that variant's records on d
        for side, recs in (("A", ra_all), ("B", rb_all)):
            here = [r for r in recs if r.job.dataset.id == d]
            for mid in dict.fromkeys(r.label for r in here):
                recs_of[side, mid] = [r for r in here if r.label == mid]
                g = rows[mid]
                specs = sorted({r.job.spec for r in recs_of[side, mid]})
                variants.append({"side": side, "side_name": a if side == "A" else b, "spec": ", ".join(specs),
                                 "model": mid, "n": g["n"], "accuracy": g["accuracy"],
                                 "balanced_accuracy": g["balanced_accuracy"], "macro_f1": g["macro_f1"],
                                 "params": g["params"], "gmacs": g["gmacs"], "latency_ms": g["latency_ms"],
                                 "input_size": g["input_size"], "classes": g["classes"]})
        pairs = []
        for va in [v for v in variants if v["side"] == "A"]:
            for vb in [v for v in variants if v["side"] == "B"]:
                recs_a, recs_b = recs_of["A", va["model"]], recs_of["B", vb["model"]]
                if {r.job.spec for r in recs_a} != {r.job.spec for r in recs_b}:
                    continue  # different experiments: listed side by side above, never paired
                st = paired_stats(recs_a, recs_b, va["classes"])
                pairs.append({"a": va["model"], "b": vb["model"], **(st or {"note": "nothing to pair: no common seed with identical test labels"})})
        out["datasets"][d] = {"variants": variants, "pairs": pairs}
    if not out["datasets"]:
        raise FerbenchError(f"compare: {a!r} and {b!r} have no dataset in common; nothing to pair")
    return out


def compare_summary(result: dict[str, Any], name: str) -> dict[str, Any]:
    """What the reports index shows of a compare page (its verdicts.json, as `page_summary` for a
    report): each dataset's first pair in one line; a comparison carries no claims, so no verdicts."""
    lines = []
    for d, r in result["datasets"].items():
        for p in r["pairs"][:1]:
            if "acc_diff" in p:
                lo, hi = p["acc_diff_ci95"]
                lines.append(f"{d}: {p['a']} - {p['b']} {100 * p['acc_diff']:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}], "
                             f"paired permutation p = {p['paired_test']['p_value']:.2g} over {p['n_images']:,} test images")
    return {"name": name, "description": f"Paired comparison, {result['a']} vs {result['b']}. " + "; ".join(lines) + ".",
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "datasets": sorted(result["datasets"]),
            "verdicts": []}


def write_compare(result: dict[str, Any], out: Path) -> list[Path]:
    """report.md, index.html (self-contained) and an accuracy-vs-GMACs figure under `out`; the
    reports index links it like any report."""
    from ferbench.report.render import _env
    from ferbench.report.figures import scatter_figure
    from ferbench.records import write_bytes_atomic, write_text_atomic
    import base64

    points = [{"label": f"{v['model']} ({d})", "GMACs": v["gmacs"], "accuracy": 100 * v["accuracy"]}
              for d, r in result["datasets"].items() for v in r["variants"] if v["gmacs"] is not None]
    png = scatter_figure(points, "GMACs", "accuracy", f"{result['a']} vs {result['b']}: test accuracy vs GMACs")
    conditions = Section("Conditions", tables=[condition_table(result["conditions"])])
    ctx = {**result, "sections": [conditions], "figure_md": "compare_acc_vs_gmacs.png",
           "figure_html": "data:image/png;base64," + base64.b64encode(png).decode()}
    md = _env(False).get_template("compare.md.j2").render(**ctx)
    html = _env(True).get_template("compare.html.j2").render(**ctx)
    write_bytes_atomic(out / "compare_acc_vs_gmacs.png", png)
    write_text_atomic(out / "verdicts.json", json.dumps(compare_summary(result, out.name), indent=2))
    write_text_atomic(out / "report.md", md)
    write_text_atomic(out / "index.html", html)
    from ferbench.report.render import write_index

    if (out.parent / "index.html").exists():  # inside a reports folder: link it from the index
        write_index(out.parent)
    return [out / "report.md", out / "index.html"]
