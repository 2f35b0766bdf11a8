"""Real-browser checks in headless Chromium: published pages load every image with no console errors,
and a report built from hostile run records executes nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def open_page(browser, path: Path, shot: Path) -> dict:
    page = browser.new_page()
    errors, dialogs = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    requests = []  # anything but the page's own files and inline images is an external request
    page.on("request", lambda q: requests.append(q.url) if not q.url.startswith(("file:", "data:")) else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
    pwned = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    return {"errors": errors, "dialogs": dialogs, "images": images, "pwned": pwned, "requests": requests}


PUBLISHED = sorted(p for p in (REPO / "reports").glob("*/index.html")) + [REPO / "reports" / "index.html"]


@pytest.mark.parametrize("page", [p for p in PUBLISHED if p.exists()], ids=lambda p: str(p.relative_to(REPO)))
def test_published_page_loads_cleanly(browser, page, tmp_path):
    shot = tmp_path / "screenshot.png"
    r = open_page(browser, page, shot)
    assert not r["errors"], r["errors"]
    assert all(ok for _, ok in r["images"]), [a for a, ok in r["images"] if not ok]
    if page.parent.name != "reports":
        assert r["images"], "a report page should have figures"
        assert "Conditions" in page.read_text()
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")


HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2;alert(2)">'


def test_hostile_ids_and_class_names_are_escaped(browser, tmp_path):
    from typer.testing import CliRunner

    from ferbench.cli import app
    from ferbench.report import render_reports

    spec = {"name": "hostile", "datasets": [{"name": "synthfer", "options": {"n_train": 48, "n_val": 16, "n_test": 16}}],
            "models": [{"id": "m", "arch": "convnext-atto"}], "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert CliRunner().invoke(app, ["run", "s.yaml"]).exit_code == 0
    finally:
        os.chdir(old)
    job_dir = next((tmp_path / "runs" / "hostile").glob("m__*"))
    import shutil

    planted = job_dir.parent / "planted"  # a copy whose ids are no ids at all: refused, listed as unreadable
    shutil.copytree(job_dir, planted)
    job = yaml.safe_load((planted / "job.yaml").read_text())
    job["job"]["model"]["id"] = HOSTILE
    job["job"]["dataset"]["id"] = HOSTILE + "/../../x"
    (planted / "job.yaml").write_text(yaml.safe_dump(job))
    job = yaml.safe_load((job_dir / "job.yaml").read_text())
    job["job"]["model"]["options"] = {"attention": HOSTILE, "note": "[x](javascript:window.__pwned=3)"}
    (job_dir / "job.yaml").write_text(yaml.safe_dump(job))
    import json

    m = json.loads((job_dir / "metrics.json").read_text())
    first = m["classes"][0]
    m["classes"][0] = HOSTILE
    for split in ("val", "test"):
        for sel in m.get(split, {}).values():
            sel["per_class_recall"][HOSTILE] = sel["per_class_recall"].pop(first)
    (job_dir / "metrics.json").write_text(json.dumps(m))
    sp = yaml.safe_load((tmp_path / "runs" / "hostile" / "spec.yaml").read_text())
    sp["description"] = HOSTILE + " [click](javascript:window.__pwned=4) ![i](http://example.invalid/t.png)"
    sp["claims"] = [{"model": HOSTILE, "dataset": HOSTILE + "/../../x", "value": 50.0, "source": HOSTILE}]
    (tmp_path / "runs" / "hostile" / "spec.yaml").write_text(yaml.safe_dump(sp))
    render_reports("hostile", tmp_path / "runs", tmp_path / "reports")
    html = (tmp_path / "reports" / "hostile" / "index.html").read_text()
    assert HOSTILE not in html and "&lt;script&gt;" in html
    assert "planted" in html and "job.model.id: Value error, id &#39;&lt;script&gt;" in html
    assert not list(tmp_path.glob("x*")) and all(p.parent.name == "figures" for p in (tmp_path / "reports").rglob("*.png"))
    r = open_page(browser, tmp_path / "reports" / "hostile" / "index.html", tmp_path / "hostile.png")
    assert r["pwned"] is None and not r["dialogs"] and not r["requests"], r
    assert r["images"] and all(ok for _, ok in r["images"]), r["images"]


def test_hostile_report_md_rendered_by_a_markdown_viewer_executes_nothing(browser, tmp_path):
    """report.md as a Markdown viewer that passes raw HTML through (markdown-it with html on, the
    least safe setting) shows it: user strings stay text, no script runs, nothing is fetched."""
    from markdown_it import MarkdownIt

    test_hostile_ids_and_class_names_are_escaped(browser, tmp_path)
    folder = tmp_path / "reports" / "hostile"
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render((folder / "report.md").read_text())
    assert "<script" not in body and "onerror=" not in body.replace("onerror=&quot;", "")
    page = folder / "report.md.html"  # beside report.md, so its relative figure links resolve
    page.write_text(f"<!doctype html><meta charset='utf-8'><title>md</title>{body}")
    r = open_page(browser, page, tmp_path / "md.png")
    assert r["pwned"] is None and not r["dialogs"] and not r["requests"], r
    assert r["images"] and all(ok for _, ok in r["images"]), r["images"]
    assert "&lt;script&gt;" in body
