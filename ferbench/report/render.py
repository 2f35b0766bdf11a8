"""Rendering and writing report pages: context -> index.html (self-contained) and report.md (+ figures/).

Each page is written into a staging folder that replaces the page folder whole at the end
(`staging.staged_folder`), so a failure (an error while rendering, a full disk) leaves the previous
page as it was. Both templates render the same `sections` (`sections.describe_run`).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import markupsafe

from ferbench.errors import FerbenchError
from ferbench.staging import staged_folder
from ferbench.records import RunRecord, check_outside_records, copy_records, write_bytes_atomic, write_text_atomic
from ferbench.report.page import build_context, page_summary, spec_folders
from ferbench.report.tables import fmt_pct

_MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "\\": "\\\\", "[": "\\[", "]": "\\]",
                             "`": "\\`", "*": "\\*", "_": "\\_"})


def markdown_text(value: Any) -> Any:
    """A value as Markdown text: HTML, table pipes and link, image and emphasis syntax in user
    strings (descriptions, ids, class names, option values) shown as written, never live in a
    Markdown viewer (no script, no image fetched from elsewhere); a line break inside a value is
    `<br>`, so no value ends a table row. Template-made links are `Markup`."""
    if not isinstance(value, str) or isinstance(value, markupsafe.Markup):
        return value
    body = value.rstrip("\r\n")  # a line break inside a value (a class name read from a record) would end a table row
    return body.translate(_MD_ESCAPES).replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>") + value[len(body):]


def _env(html: bool) -> jinja2.Environment:
    """Templates for HTML (autoescaped) or Markdown (every value through `markdown_text`)."""
    loader = jinja2.FunctionLoader(lambda name: resources.files("ferbench.templates").joinpath(name).read_text("utf-8"))
    env = jinja2.Environment(loader=loader, autoescape=html, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, finalize=None if html else markdown_text)
    env.filters["pct"] = fmt_pct
    env.filters["signed"] = lambda x: "–" if x is None else f"{100 * x:+.2f}"
    return env


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def render_reports(target: str | None, runs_dir: Path, out: Path, formats: tuple[str, ...] = ("md", "html"),
                   with_records: bool = False) -> list[Path]:
    """Render each spec folder's pages (and exports, by `formats`), each page into a staging folder
    that replaces the page whole. `with_records` publishes: the spec's records (no checkpoints) are
    first copied into the page's records/ folder, joining any published there before, and the page is
    rendered from that folder, so a published page always shows exactly the records beside it."""
    html_t, md_t = _env(True).get_template("report.html.j2"), _env(False).get_template("report.md.j2")
    written: list[Path] = []
    check_outside_records(out)
    for folder in spec_folders(target, runs_dir):
        dest = page_folder(folder, out, publish=with_records)
        check_outside_records(dest)
        for sub in (dest, dest / "figures", dest / "records"):  # a linked folder would take the writes elsewhere
            if sub.is_symlink():
                raise FerbenchError(f"{sub}: is a symbolic link; ferbench never writes a page through one (remove it)")
        with staged_folder(dest) as stage:  # the page whole, or the old one untouched (a full disk mid-page)
            if with_records and folder.resolve().parent != (dest / "records").resolve():  # not re-rendered from them
                copy_records(folder, stage / "records")
                folder = stage / "records" / folder.resolve().name
            ctx, figs = build_context(folder)
            records = ctx.pop("records")
            html = html_t.render(**ctx, img=lambda n: _b64(figs[n]))
            md = md_t.render(**ctx, img=lambda n: markupsafe.Markup(f"figures/{n}"))
            summary = page_summary(ctx)
            rendered = [(Path("figures") / n, b) for n, b in figs.items()]
            rendered += _exports(Path(), formats, ctx, records, summary["verdicts"])
            rendered += [(Path("verdicts.json"), json.dumps(summary, indent=2).encode())]
            rendered += [(Path(name), text.encode()) for name, text, fmt in
                         (("report.md", md, "md"), ("index.html", html, "html")) if fmt in formats]
            for rel, data in rendered:
                write_bytes_atomic(stage / rel, data)
        written += [dest / rel for rel, _ in rendered if rel.parent.name != "figures" and rel.name != "verdicts.json"]
    return written + [write_index(out)]


LOCAL_SUFFIX = "-local"


def page_folder(folder: Path, out: Path, publish: bool = False) -> Path:
    """Where the page of spec folder `folder` goes: out/<name>, unless that page is published with its
    records (out/<name>/records/), `folder` is not those records and we are not publishing (`report
    --with-records`): then out/<name>-local, so a published page always rests on the records beside it
    (the README's quickstart run, repeated in a clone, renders to reports/quickstart-local/ and leaves
    reports/quickstart/ as published)."""
    name = folder.resolve().name  # `runs/x/..` names its real folder, never `..`
    dest = out / name
    published = dest / "records" / name
    if not publish and published.is_dir() and published.resolve() != folder.resolve():
        dest = out / f"{name}{LOCAL_SUFFIX}"
    if dest.resolve().parent != out.resolve():
        raise FerbenchError(f"{folder}: a report would be written outside {out}")
    return dest


def _exports(dest: Path, formats: tuple[str, ...], ctx: dict[str, Any], records: list[RunRecord],
             verdicts: list[dict[str, Any]]) -> list[tuple[Path, bytes]]:
    from ferbench.report import exports

    out = []
    if "csv" in formats:
        out.append((dest / "results.csv", exports.results_csv(records)))
    if "json" in formats:
        out.append((dest / "results.json", exports.results_json(records, verdicts)))
    if "latex" in formats and ctx["tables"]["last"]["rows"]:
        out.append((dest / "results.tex", exports.latex_table(ctx["tables"], "last", ctx["name"])))
    return out


def _read_summary(page: Path) -> dict[str, Any]:
    try:
        summary = json.loads((page / "verdicts.json").read_text())
        return summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        return {}  # a page rendered before verdicts existed: listed without them


INDEX_MARK = '<meta name="generator" content="ferbench reports index">'


def is_reports_index(path: Path) -> bool:
    """Whether `path` is a reports index ferbench wrote (compare links itself from one, and from nothing else:
    an index.html of the user's own beside a compare folder is never touched). Old indexes lack the mark."""
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return INDEX_MARK in head or "<title>ferbench reports</title>" in head


def write_index(out: Path) -> Path:
    """reports/index.html: every report folder under `out`, with its description, datasets, date
    and every claim's verdict, so a reader sees in one table what holds up."""
    pages = sorted(p.parent for p in out.glob("*/index.html") if not p.parent.name.startswith("."))  # not a page being staged
    # relative links, the name percent-encoded: a folder named `javascript:...` is a path, never a script
    items = [{"name": p.name, "href": f"./{quote(p.name)}/index.html", "md": f"./{quote(p.name)}/report.md",
              **{k: v for k, v in _read_summary(p).items() if k != "name"}} for p in pages]
    html = _env(True).get_template("index.html.j2").render(pages=items, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_text_atomic(out / "index.html", html)
    return out / "index.html"
