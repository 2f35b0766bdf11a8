"""Report exports beside the pages: a tidy results table (CSV, JSON) and a LaTeX table in a paper's
layout. Built from the same records and tables as the pages; never trains."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd

from ferbench.records import RunRecord
from ferbench.report.tables import runs_frame

FORMATS = ("md", "html", "csv", "json", "latex")
TIDY_COLUMNS = ["spec", "model", "arch", "dataset", "fold", "seed", "selection", "accuracy", "balanced_accuracy", "macro_f1",
                "params", "gmacs", "input_size", "epochs", "condition", "run"]


def parse_formats(text: str) -> list[str]:
    """`md,html,csv` -> the formats, each checked; one line naming the unknown one otherwise."""
    from ferbench.errors import FerbenchError

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise FerbenchError(f"--format {text!r}: expected a comma-separated list of {', '.join(FORMATS)}")
    return formats


def tidy_results(records: list[RunRecord]) -> pd.DataFrame:
    """One row per complete job and model selection (last epoch, best validation epoch)."""
    df = runs_frame(records)
    if df.empty:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    spec = {r.id: r.job.spec for r in records}
    condition = {r.id: r.condition for r in records}
    fold = {r.id: r.job.fold for r in records}  # the cross-validation fold a row tests on (empty without folds)
    rows = []
    for _, row in df.iterrows():
        for which, selection in (("last", "last"), ("best", "best-val")):
            if f"acc_{which}" not in row or pd.isna(row[f"acc_{which}"]):
                continue
            rows.append({"spec": spec[row.run], "model": row.model, "arch": row.arch, "dataset": row.dataset,
                         "fold": fold[row.run], "seed": row.seed, "selection": selection, "accuracy": row[f"acc_{which}"],
                         "balanced_accuracy": row[f"bacc_{which}"], "macro_f1": row[f"f1_{which}"],
                         "params": row.params, "gmacs": row.gmacs, "input_size": row.input_size, "epochs": row.epochs,
                         "condition": condition[row.run], "run": row.run})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def results_csv(records: list[RunRecord]) -> bytes:
    return tidy_results(records).to_csv(index=False).encode()


def results_json(records: list[RunRecord], verdicts: list[dict[str, Any]]) -> bytes:
    rows = json.loads(tidy_results(records).to_json(orient="records"))
    return json.dumps({"results": rows, "verdicts": verdicts}, indent=2, default=list).encode()


def latex_escape(text: str) -> str:
    """Text as LaTeX prints it: the ten special characters escaped."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(ch, ch) for ch in text)


def latex_table(tables: dict[str, Any], which: str, name: str) -> bytes:
    """Rows models, columns datasets; each cell `mean ± std (claim, Δ)` in percent, as a paper prints
    it (booktabs), ready to paste; user strings are escaped for LaTeX."""
    t = tables[which]
    cells = {}
    for row in t["rows"]:
        cells[row["model"]] = {d: _latex_cell(row["cells"][d]) for d in t["datasets"]}
    majority = t.get("majority") or {}
    cells["majority class (test)"] = {d: "--" if majority.get(d) is None else f"{100 * majority[d]:.2f}" for d in t["datasets"]}
    claimed = any(c and c["claim"] is not None for row in t["rows"] for c in row["cells"].values())
    frame = pd.DataFrame.from_dict(cells, orient="index", columns=t["datasets"])
    frame.index.name = "model"
    buf = io.StringIO()
    # names (model ids, dataset ids) escaped; the cells hold only numbers and the macros written here
    styler = frame.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    selection = "last epoch" if which == "last" else "best validation epoch"
    caption = (f"{latex_escape(name)}: test accuracy (\\%), {selection}, mean $\\pm$ std over n seeds"
               + ("; paper = the claimed value, $\\Delta$ = reproduced $-$ claimed" if claimed else "")
               + "; last row: always predicting the most frequent test class (ferbench)")
    styler.to_latex(buf, hrules=True, caption=caption, position_float="centering")
    return buf.getvalue().encode()


def _latex_cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "--"
    text = f"{100 * c['mean']:.2f}" + (f" $\\pm$ {100 * c['std']:.2f}" if c["std"] is not None else "") + f" (n={c['n']})"
    if c["claim"] is not None:
        text += f"; paper {100 * c['claim']:.2f}, $\\Delta$ {100 * c['diff']:+.2f}"
    return text
