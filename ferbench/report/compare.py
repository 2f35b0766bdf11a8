"""`ferbench compare A B`: two model families (or model ids) side by side with paired statistics.

Pairs are runs of A and B from the same spec (so under one experiment's conditions: a 48x48 CPU
run is never paired with a 224x224 GPU run) on the same dataset and seed whose test labels are
identical. "Is method A better than method B" is answered with the run (seed) as the unit
(`metrics.seed_level_difference`): the mean difference over paired seeds with its t interval, a
paired t test, and P(a run of A beats a run of B). Beside it, statements about these trained
models on this test set, whose unit is the test image:
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
from ferbench.metrics import (bootstrap_mean_ci, mcnemar_exact, paired_permutation_test, per_class_recall,
                              seed_level_difference)
from ferbench.report.sections import (Section, Table, condition_table, environment_sections, latency_cell,
                                      provenance_sections, run_level_reading, seed_level_cells, signed, small, text)
from ferbench.report.tables import fmt_pct, metric_rows
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
        if ("test.last.logits" not in p or "test.last.logits" not in q or not np.array_equal(p["test.labels"], q["test.labels"])
                or not r.same_data(other)):  # the same labels on other images are not a pair
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
        "seed_level": seed_level_difference(A.mean(1), B.mean(1)),
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
    from ferbench.report.page import code_versions, conditions, environments

    out: dict[str, Any] = {"a": a, "b": b, "records_from": str(runs_dir), "datasets": {}, "conditions": conditions(ra_all + rb_all),
                           "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "code_versions": code_versions(ra_all + rb_all), "environments": environments(ra_all + rb_all)}
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
                                 "params": g["params"], "gmacs": g["gmacs"], "latency_ms": g["latency_ms"], "latency_iqr_ms": g["latency_iqr_ms"],
                                 "input_size": g["input_size"], "classes": g["classes"]})
        pairs = []
        for va in [v for v in variants if v["side"] == "A"]:
            for vb in [v for v in variants if v["side"] == "B"]:
                recs_a, recs_b = recs_of["A", va["model"]], recs_of["B", vb["model"]]
                if {r.job.spec for r in recs_a} != {r.job.spec for r in recs_b}:
                    continue  # different experiments: listed side by side above, never paired
                st = paired_stats(recs_a, recs_b, va["classes"])
                if st:
                    st["seed_level"]["reading"] = run_level_reading(st["seed_level"], va["model"], vb["model"])
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
            if "seed_level" in p:
                sl = p["seed_level"]
                ci = f" [{100 * sl['ci'][0]:+.2f}, {100 * sl['ci'][1]:+.2f}]" if sl["ci"] else ""
                lines.append(f"{d}: {p['a']} - {p['b']} {100 * sl['mean_diff']:+.2f} points{ci} over {sl['seeds']} paired "
                             f"seed(s), P(a run of {p['a']} beats one of {p['b']}) = {sl['p_a_beats_b']:.2f}: "
                             + sl["reading"])
    return {"name": name, "description": f"Paired comparison, {result['a']} vs {result['b']}. " + "; ".join(lines) + ".",
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "datasets": sorted(result["datasets"]),
            "verdicts": []}


def compare_sections(result: dict[str, Any]) -> list[Section]:
    """A compare page's sections: the answer (the run as the unit) first, then each dataset's variants
    and the image-level statements about these trained models, conditions and environments."""
    a, b = result["a"], result["b"]
    answer, image, recall = [], [], []
    for d, r in result["datasets"].items():
        for p in r["pairs"]:
            if "note" in p:
                answer.append([text(d), text(p["a"]), text(p["b"]), text("–"), text(p["note"]), *[text("")] * 4])
                continue
            answer.append([text(d), text(p["a"]), text(p["b"]), *seed_level_cells(p["seed_level"]), text(p["seed_level"]["reading"])])
            pt = p["paired_test"]
            image.append([text(d), text(p["a"]), text(p["b"]), text(", ".join(map(str, p["seeds"]))), text(p["n_images"]),
                          text(signed(p["acc_diff"])), text(f"[{signed(p['acc_diff_ci95'][0])}, {signed(p['acc_diff_ci95'][1])}]"),
                          text(f"{pt['p_value']:.3g}" + ("" if pt["exact"] else f" ({pt['resamples']} sign flips)")),
                          text("; ".join(f"s{m['seed']}: {m['b']} / {m['c']}, {m['p_value']:.3g}" for m in p["mcnemar_per_seed"])),
                          text(fmt_pct(p["agreement"], 1))])
            recall.append([text(d), text(f"{p['a']} − {p['b']}"),
                           text(", ".join(f"{c} {signed(v)}" for c, v in p["recall_diff"].items()))])
    out = [*provenance_sections(result), Section(
        f"Is {a} better than {b}? The run as the unit",
        "A paper and a reproduction share the test images; what separates two methods is how their runs vary. Per "
        "paired seed, the accuracy difference (points); its mean over seeds with a 95 % t interval, a paired t test "
        "over seeds (scipy.stats.ttest_rel), and P(run of A beats run of B): the share of all pairs of runs in which "
        "A's run is better, ties counted half (Bouthillier et al., MLSys 2021).",
        tables=[Table(["dataset", "A", "B", "paired seeds", "mean Δ", "95 % CI (seeds)", "paired t p", "P(A run > B run)",
                       "reading"], answer)])]
    for d, r in result["datasets"].items():
        rows = [[text(f"{v['side']}: {v['side_name']}"), text(v["spec"]), text(v["model"]), text(v["n"]),
                 text(fmt_pct(v["accuracy"])), text(fmt_pct(v["balanced_accuracy"])), text(fmt_pct(v["macro_f1"])),
                 text(f"{v['params'] / 1e6:.2f}" if v["params"] else "–"),
                 text("–" if v["gmacs"] is None else f"{v['gmacs']:.3f}", small(f" @{v['input_size']}")),
                 latency_cell(v)] for v in r["variants"]]
        out.append(Section(f"{d}: the variants", tables=[Table(
            ["side", "spec", "model", "seeds", "accuracy", "balanced acc.", "macro-F1", "params (M)", "GMACs",
             "CPU latency (ms)"], rows)]))
    if image:
        out.append(Section(
            "These trained models on this test set (unit: the test image)",
            "A statement about the particular trained models, not about the methods: Δ = accuracy(A) − accuracy(B) "
            "averaged over the paired seeds; the CI is a percentile bootstrap that resamples test images (each image's "
            "seeds kept together), the p-value a paired permutation test that flips the sign of each image's mean "
            "difference, and McNemar's exact test is given per seed (b / c: images only A / only B got right).",
            tables=[Table(["dataset", "A", "B", "paired seeds", "test images", "Δ accuracy", "95 % CI (images)",
                           "permutation p", "McNemar per seed (b / c, exact p)", "agreement"], image),
                    Table(["dataset", "per-class recall difference (points)", "classes"], recall)]))
    out.append(Section("Conditions", "The runs compared here were made under these conditions; they may differ from "
                       "the papers'.", box="note", tables=[condition_table(result["conditions"])]))
    return out + environment_sections(result["environments"])


def write_compare(result: dict[str, Any], out: Path, reports: Path | None = None) -> list[Path]:
    """report.md, index.html (self-contained) and an accuracy-vs-GMACs figure under `out`. When `out`
    is a folder of the reports folder `reports`, that folder's index (one ferbench wrote, or none yet)
    links it like any report; nothing outside `out` is written otherwise."""
    from ferbench.report.render import _env
    from ferbench.report.figures import scatter_figure
    from ferbench.fileio import write_together
    import base64

    points = [{"label": f"{v['model']} ({d})", "GMACs": v["gmacs"], "accuracy": 100 * v["accuracy"]}
              for d, r in result["datasets"].items() for v in r["variants"] if v["gmacs"] is not None]
    png = scatter_figure(points, "GMACs", "accuracy", f"{result['a']} vs {result['b']}: test accuracy vs GMACs")
    ctx = {**result, "sections": compare_sections(result), "figure_md": "compare_acc_vs_gmacs.png",
           "figure_html": "data:image/png;base64," + base64.b64encode(png).decode()}
    md = _env(False).get_template("compare.md.j2").render(**ctx)
    html = _env(True).get_template("compare.html.j2").render(**ctx)
    files = {"compare_acc_vs_gmacs.png": png, "verdicts.json": json.dumps(compare_summary(result, out.name), indent=2).encode(),
             "report.md": md.encode(), "index.html": html.encode()}
    write_together([(out / name, lambda tmp, data=data: tmp.write_bytes(data)) for name, data in files.items()])  # all or none
    from ferbench.report.render import is_reports_index, write_index

    index = out.parent / "index.html"
    if (reports is not None and out.parent.resolve() == reports.resolve()
            and (is_reports_index(index) or not index.exists())):  # ferbench's own reports folder: link it there
        write_index(out.parent)
    return [out / "report.md", out / "index.html"]
