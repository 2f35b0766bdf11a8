"""A report page as an ordered list of sections, each a title, a caption, tables and figures.

`describe_run` turns a page's context (`page.build_context`) into the sections both templates
render: the HTML and the Markdown page list the same sections in the same order with the same
rows, because neither template lists them itself. A table cell is a list of `(style, text)` parts
("" plain, "b" strong, "small" secondary, "br" a line break), which each format spells its own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ferbench.report.tables import fmt_pct

Cell = list[tuple[str, str]]
BR: tuple[str, str] = ("br", "")
SELECTIONS = (("last", "last epoch"), ("best", "best validation epoch"))


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    row_classes: list[str] = field(default_factory=list)  # HTML only: a verdict's colour
    css: str = ""


@dataclass
class Section:
    title: str
    caption: str = ""
    level: int = 2
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (figure file name, alt text)
    box: str = ""  # "bad" or "note": the caption is a warning or a caveat, shown as a box
    collapsed: bool = False  # HTML: inside <details>


def text(*parts: Any) -> Cell:
    """A cell from plain strings and (style, text) parts."""
    return [p if isinstance(p, tuple) else ("", str(p)) for p in parts if p != ""]


def b(x: Any) -> tuple[str, str]:
    return ("b", str(x))


def small(x: Any) -> tuple[str, str]:
    return ("small", str(x))


def signed(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def mean_cell(mean: float, std: float | None, n: int | None = None, ci: Any = None) -> list[tuple[str, str]]:
    """`**m** ± s (n=k) [lo, hi]` as parts."""
    parts = [b(fmt_pct(mean))] + ([("", f" ± {fmt_pct(std)}")] if std is not None else [])
    if n is not None:
        parts.append(small(f" (n={n})"))
    if ci:
        parts += [BR, small(f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]")]
    return parts


def describe_run(ctx: dict[str, Any]) -> list[Section]:
    """Every section of a report page, in page order."""
    return [*provenance_sections(ctx), *verdict_sections(ctx), *problem_sections(ctx), *accuracy_sections(ctx), *paired_sections(ctx), *cross_sections(ctx),
            *fold_sections(ctx), *metric_sections(ctx),
            *figure_sections(ctx), *claim_sections(ctx), *condition_sections(ctx)]


def provenance_sections(ctx: dict[str, Any]) -> list[Section]:
    versions = ctx["code_versions"]
    if not versions:
        return []
    what = (f"The records on this page were made by {len(versions)} code versions" if len(versions) > 1 else
            "The records on this page were made by code that differs from its commit")
    rows = [[text(commit), text(", ".join(runs))] for commit, runs in versions.items()]
    return [Section("Code versions", f"{what} (git commit; + uncommitted changes: edited ferbench sources the commit "
                    "does not hold).", box="bad", tables=[Table(["code version", "runs"], rows)])]


VERDICT_CAPTION = (
    "One row per claim and matching experiment, computed from the run records. A paper's number and ours are "
    "measured on the same test images, so what separates them is training randomness: the unit is the run (seed). "
    "Retrained: the interval is a 95 % prediction interval for one run of the recipe (Student t on the seeds), at "
    "the paper's selection rule where the records allow it (its best test epoch; the best of its runs); "
    "reproduced = the claim lies inside it, below / above = outside; inconclusive = fewer than 3 seeds with the claim "
    "inside, or one run's interval wider than ±5 points; P(run ≥ claim) is the chance that one run of the recipe "
    "reaches the claim. Released weights re-evaluated: the authors' own trained file, no training randomness: the "
    "accuracy ± the test images with approximate pixels, against the claim as precisely as it was stated. Not "
    "comparable = a condition the paper states differs from the runs (listed). Runs of another architecture never "
    "count for a claim.")


def verdict_cells(v: dict[str, Any]) -> list[Cell]:
    """One verdict as table cells (the page's verdict table)."""
    cost = v.get("cost")
    ours: Cell = text("–")
    if v["mean"] is not None:
        ours = mean_cell(v["mean"], v.get("std"), None, None) + [BR, small(f"{v['n']} seed(s), {v['basis']}")]
    interval = text("–")
    if v.get("interval"):
        interval = text(f"[{fmt_pct(v['interval'][0])}, {fmt_pct(v['interval'][1])}]")
    reach = text("–" if v.get("p_reach") is None else f"{v['p_reach']:.2f}")
    why = text(v["why"])
    for d in v["differs"]:
        why += [BR, ("", f"• {d}")]
    for c in v.get("caveats", []):
        why += [BR, small(f"note: {c}")]
    return [text(v["model"], *([BR, small(v["label"])] if v.get("label") and v["label"] != v["model"] else [])),
            text(v.get("arch") or "–"), text(v["dataset"]),
            text(f"{cost['params_m']:.2f}" if cost else "–"),
            text(f"{cost['gmacs']:.3f}", small(f" @{cost['input_size']}")) if cost else text("–"),
            text(fmt_pct(v["claim"]), BR, small(v["source"])), ours, interval, reach, text(signed(v["diff"])),
            text(b(v["verdict"]), *([BR, small(v["kind"])] if v.get("kind") else [])), why]


def verdict_sections(ctx: dict[str, Any]) -> list[Section]:
    vs = ctx["verdicts"]
    if not vs:
        return []
    table = Table(["method", "backbone", "dataset", "params (M)", "GMACs", "paper", "ours: mean ± std", "95 % interval",
                   "P(run ≥ claim)", "Δ", "verdict", "what it rests on"], [verdict_cells(v) for v in vs],
                  row_classes=["v-" + v["verdict"].replace(" ", "-") for v in vs], css="verdicts")
    methods = sorted({v["method"] for v in vs if v.get("method")})
    return [Section("Verdicts", VERDICT_CAPTION + (" Intervals: " + "; ".join(methods) + "." if methods else ""),
                    tables=[table])]


def run_level_reading(sl: dict[str, Any], a: str, b: str) -> str:
    """One line: what the seed-level result says about A against B."""
    if sl["ci"] is None:
        return f"{sl['seeds']} paired seed(s): too few (or no spread) for a statement about runs of the methods"
    lo, hi = sl["ci"]
    if lo > 0 or hi < 0:
        better, worse = (a, b) if lo > 0 else (b, a)
        return f"runs of {better} beat runs of {worse}: the 95 % interval of the mean difference over seeds excludes 0"
    return f"no difference shown between runs of the methods at {sl['seeds']} seeds (the interval includes 0)"


PAIRED_CAPTION = (
    "Each model against the spec's first model (its reference row) on the same dataset, with the run as the unit: "
    "per seed trained on both, the difference in test accuracy (points, {basis}, the same test images); its mean "
    "with a 95 % t interval over the paired seeds, a paired t test over seeds (scipy.stats.ttest_rel), and P(A run > "
    "B run), the share of all pairs of runs in which A's run is better, ties counted half (Bouthillier et al., MLSys "
    "2021). Paper's Δ: the difference between the paper's claims for these model ids, at the paper's own architecture and "
    "conditions (see the verdicts for whether these runs share them): context, not a test.")


def seed_level_cells(sl: dict[str, Any]) -> list[Cell]:
    """A `metrics.seed_level_difference` result as cells: paired seeds, mean Δ, its CI, paired t p, P(A run > B run)."""
    return [text(sl["seeds"]), text(("b", signed(sl["mean_diff"]))),
            text(f"[{signed(sl['ci'][0])}, {signed(sl['ci'][1])}]" if sl["ci"] else "–"),
            text("–" if sl["p_value"] is None else f"{sl['p_value']:.3g}"), text(f"{sl['p_a_beats_b']:.2f}")]


def paired_sections(ctx: dict[str, Any]) -> list[Section]:
    rows = []
    for p in ctx["paired"]:
        rows.append([text(p["dataset"]), text(("b", p["a"])), text(p["b"]), *seed_level_cells(p),
                     text(signed(p["paper_diff"])), text(run_level_reading(p, p["a"], p["b"]))])
    if not rows:
        return []
    return [Section("Paired differences (the run as the unit)", PAIRED_CAPTION.format(basis="last epoch"), tables=[Table(
        ["dataset", "A", "B (reference)", "paired seeds", "mean Δ", "95 % CI (seeds)", "paired t p", "P(A run > B run)",
         "paper's Δ", "reading"], rows)])]


def problem_sections(ctx: dict[str, Any]) -> list[Section]:
    out = []
    if ctx["leakage"]:
        rows = [[text(l["dataset"]), text(l["runs"]), text(l["note"])] for l in ctx["leakage"]]
        out.append(Section("Leakage", "Some test sets on this page are not independent of their training data; their "
                           "accuracy overstates what the model does on new people.", box="bad",
                           tables=[Table(["dataset", "runs", "note"], rows)]))
    if ctx["problems"]:
        rows = [[text(p["run"]), text(p["status"]), text(p["reason"])] for p in ctx["problems"]]
        out.append(Section("Failed and incomplete runs", f"{len(rows)} run record(s) did not complete or could not be "
                           "read; they are not in the tables.", box="bad", tables=[Table(["run", "status", "reason"], rows)]))
    return out


def accuracy_sections(ctx: dict[str, Any]) -> list[Section]:
    out = []
    for which, label in SELECTIONS:
        t = ctx["tables"][which]
        if not t["rows"]:
            continue
        rows, claimed = [], False
        for row in t["rows"]:
            cells = [text(row["model"])]
            for d in t["datasets"]:
                c = row["cells"].get(d)
                if not c:
                    cells.append(text("–"))
                    continue
                parts = mean_cell(c["mean"], c["std"], c["n"], c["ci"])
                if c["claim"] is not None:
                    claimed = True
                    parts += [BR, ("", f"claimed {fmt_pct(c['claim'])}, Δ {signed(c['diff'])}")]
                cells.append(parts)
            rows.append(cells)
        rows.append([text(small("majority class (test)")), *[text(small(fmt_pct(t["majority"].get(d)))) for d in t["datasets"]]])
        out.append(Section(f"Test accuracy (%), {label}", (
            "Each cell: mean ± std over n seeds (a cross-validation seed's folds pooled: its correct over its tested "
            "images), [95 % CI of that mean: a percentile bootstrap that resamples test images, each image's seeds kept "
            "together: how precisely these runs are measured, not how a new run would land]"
            + (", the paper's claim and the difference (reproduced − claimed); the verdicts above compare claims with "
               "single runs" if claimed else "")
            + ". The last row: always predicting the test set's most frequent class."),
            tables=[Table(["model", *t["datasets"]], rows)]))
    return out


def cross_sections(ctx: dict[str, Any]) -> list[Section]:
    out = []
    for which, label in SELECTIONS:
        if not ctx["cross"][which]:
            continue
        rows = [[text(c["model"]), text(c["trained_on"]), text(f"{c['target']} ({c['target_dataset']})"),
                 mean_cell(c["mean"], c["std"]), text(fmt_pct(c["balanced_accuracy"])), text(c["n"]), text(c["images"]),
                 text(", ".join(c["classes"])), text(", ".join(c["dropped"]) or "none")] for c in ctx["cross"][which]]
        out.append(Section(f"Cross-dataset test accuracy (%), {label}", (
            "Models trained on one dataset, tested on another through a class map: target classes no training class "
            "maps to are dropped with their images; training classes mapped to nothing are never predicted. "
            "Mean ± std over seeds (and folds)."),
            tables=[Table(["model", "trained on", "tested on", "accuracy", "balanced acc.", "n", "images",
                           "classes scored", "dropped"], rows)]))
    return out


def fold_sections(ctx: dict[str, Any]) -> list[Section]:
    out = []
    for which, label in SELECTIONS:
        rows_in = ctx["folds"][which]
        if not rows_in:
            continue
        folds = rows_in[0]["folds"]
        rows = [[text(r["model"]), text(r["dataset"]), *[text(fmt_pct(r["folds"][f]) if f in r["folds"] else "–") for f in folds],
                 mean_cell(r["mean"], r["std"])] for r in rows_in]
        out.append(Section(f"Cross-validation folds: test accuracy (%), {label}", (
            "Per fold: the mean over seeds; then the mean and sample std over folds, as CK+ papers report them. In the "
            "table above such a cell pools every fold and seed (n = folds × seeds), and its CI resamples the tested "
            "images: each fold's test set, once per seed, together cover the data."),
            tables=[Table(["model", "dataset", *[f"fold {f}" for f in folds], "mean ± std over folds"], rows)]))
    return out


LATENCY_CAPTION = (
    "CPU latency: one batch-1 forward, timed by torch.utils.benchmark on the machine that trained the run: the "
    "median over seeds, with the interquartile range; runs recorded before its spread was (2026-12-04) show none.")


def latency_cell(g: dict[str, Any]) -> Cell:
    """Latency with its spread, or `–` (a number without its spread is not shown)."""
    if g.get("latency_ms") is None:
        return text("–")
    return text(f"{g['latency_ms']:.1f}", small(f" (IQR {g['latency_iqr_ms']:.2f})"))


def metric_sections(ctx: dict[str, Any]) -> list[Section]:
    groups = ctx["groups"]
    rows = [[text(g["model"]), text(g["dataset"]), text(g["n"]), text(fmt_pct(g["accuracy"])),
             text(fmt_pct(ctx["majority"].get(g["dataset"]))),
             text(fmt_pct(g["balanced_accuracy"])), text(fmt_pct(g["macro_f1"])), text(f"{g['ece']:.3f}"),
             text(f"{g['params'] / 1e6:.2f}" if g["params"] else "–"),
             text(_num(g["gmacs"], ".3f"), small(f" @{g['input_size']}")), latency_cell(g)]
            for g in groups]
    out = [Section("Per-model metrics (test, last epoch, mean over seeds)", LATENCY_CAPTION, tables=[Table(
        ["model", "dataset", "n", "accuracy", "majority class", "balanced acc.", "macro-F1", "ECE", "params (M)",
         "GMACs", "CPU latency (ms)"], rows)])]
    sized, seen = [], set()
    for g in groups:
        if g.get("size_claim") and g["model"] not in seen:
            seen.add(g["model"])
            c = g["size_claim"]
            sized.append([text(g["model"]), text(g["records"][0].job.model.arch),
                          text(f"{g['params'] / 1e6:.2f}" if g["params"] else "–"),
                          text(f"{_num(c['params_m'], 'g')} ({c['num_classes']} classes)"),
                          text(_num(g["gmacs"], ".3f"), small(f" @{g['input_size']}")),
                          text(_num(c["gmacs"], "g"), small(f" @{c['input_size']}")), text(c["source"])])
    if sized:
        out.append(Section("Size: measured vs published", (
            "GMACs scale with the input area: compare them at the same input size "
            "(`ferbench models --claims` lists all variants at 224)."), level=3, tables=[Table(
                ["model", "arch", "params (M) measured", "published", "GMACs measured", "published", "source"], sized)]))
    recall = [Table([f"{g['model']} / {g['dataset']}", *g["classes"]],
                    [[text("recall"), *[text(fmt_pct(g["recall"][c], 1)) for c in g["classes"]]]]) for g in groups]
    if recall:
        out.append(Section("Per-class recall (%)", level=3, tables=recall))
    return out


def figure_sections(ctx: dict[str, Any]) -> list[Section]:
    groups = ctx["groups"]
    out = [Section("Confusion matrices (row-normalised, with counts)",
                   figures=[(g["figure"], f"confusion matrix {g['model']} {g['dataset']}") for g in groups]),
           Section("Data", figures=[(f["figure"], f"class distribution {f['dataset']}") for f in ctx["data_figs"]])]
    labels = [(g["label_figure"], f"label distribution {g['model']} {g['dataset']}") for g in groups if g.get("label_figure")]
    if labels:
        out.append(Section("Label distributions: predicted vs annotators", figures=labels))
    out.append(Section("Training curves", figures=[(f["figure"], f"training curves {f['dataset']}") for f in ctx["curve_figs"]]))
    return [s for s in out if s.figures]


def claim_sections(ctx: dict[str, Any]) -> list[Section]:
    if not ctx["claims"]:
        return []
    rows = [[text(c["model"]), text(c["dataset"]), text(c.get("metric") or "accuracy"), text(c["value"]), text(c["source"])]
            for c in ctx["claims"]]
    return [Section("Claims and sources", tables=[Table(["model", "dataset", "metric", "claimed", "source"], rows)])]


CONDITION_COLUMNS = (("model", "model"), ("dataset", "dataset"), ("profile", "profile"), ("arch", "arch"),
                     ("recipe", "recipe"), ("input", "input"), ("epochs", "epochs"), ("optimizer", "optimizer"),
                     ("loss", "loss"), ("pretraining", "pretraining"), ("tta", "TTA"), ("options", "model options"),
                     ("data", "data"), ("device", "device"))


def condition_table(conditions: list[dict[str, str]]) -> Table:
    """The conditions rows (`page.conditions`) as a table: report and compare pages show the same one."""
    return Table([h for _, h in CONDITION_COLUMNS], [[text(c[k]) for k, _ in CONDITION_COLUMNS] for c in conditions])


def condition_sections(ctx: dict[str, Any]) -> list[Section]:
    out = [Section("Conditions", (
        "These runs differ from the papers wherever this table says so (input size, epochs, pretraining, device, label "
        "protocol, fidelity options). Reproduced numbers are reported for two model selections: last (the model after "
        "the final epoch) and best (the epoch with the best validation accuracy); papers report one or the other."),
        box="note", tables=[condition_table(ctx["conditions"])], collapsed=True)]
    return out + recipe_difference_sections(ctx["conditions"]) + environment_sections(ctx["environments"])


def recipe_difference_sections(conditions: list[dict[str, str]]) -> list[Section]:
    """For each code recipe the runs use, what it still does differently from the official code."""
    from ferbench.spec import RECIPE_DIFFERENCES

    used = dict.fromkeys(c["recipe"] for c in conditions)
    return [Section(f"Known differences from the official code (recipe {r})", level=3,
                    tables=[Table(["difference"], [[text(d)] for d in RECIPE_DIFFERENCES[r]])])
            for r in used if r in RECIPE_DIFFERENCES]


def environment_sections(envs: list[dict[str, Any]]) -> list[Section]:
    """Each distinct environment the records were made in (collapsed on the HTML page)."""
    if not envs:
        return []
    tables = [Table([f"environment {i} of {len(envs)}", e.get("gpu") or e.get("cpu") or e.get("device", "")],
                    [[text(k), text(v)] for k, v in e.items()]) for i, e in enumerate(envs, 1)]
    return [Section("Environment", tables=tables, collapsed=True)]
