"""Verdicts per claim (inside, above and below the CI; differing conditions; another architecture),
the exports parsed back, row order, mixed code versions and the reports index."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ferbench import api
from ferbench.records import discover
from ferbench.metrics import probability_run_reaches, single_run_interval
from ferbench.report.tables import runs_frame
from ferbench.report.verdicts import claim_verdicts
from tests.conftest import run_spec_dict

SPEC = {"name": "vd", "datasets": [{"name": "synthfer", "options": {"n_train": 48, "n_val": 16, "n_test": 48}}],
        "models": [{"id": "zeta", "arch": "resnet18"}, {"id": "alpha", "arch": "resnet18", "train": {"lr": 0.05}}],
        "seeds": [0, 1], "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vd")
    run_spec_dict(d, SPEC)
    return d / "runs"


def claim(value: float, **kw) -> dict:
    return {"model": "zeta", "arch": "resnet18", "dataset": "synthfer", "metric": "accuracy", "value": value,
            "source": "test", "conditions": kw.pop("conditions", {}), **kw}


@pytest.mark.slow
def test_verdicts_from_two_seeds_not_comparable_and_no_match(runs):
    """The wiring on real records (2 seeds): the interval is one run's, from the seeds; a claim inside it
    is inconclusive with 2 seeds; the claim's stated conditions and architecture still decide first.
    Where the claim lies against the interval (below, above, reproduced) is tested on synthetic seeds
    in test_run_spread.py."""
    records = discover(runs / "vd")
    zeta = [r for r in records if r.job.model.id == "zeta"]
    frame = runs_frame(zeta)
    values = frame.sort_values("seed")["acc_last"].to_numpy(float)
    mean = float(values.mean())
    claims = [claim(100 * mean, conditions={"input_size": 24, "epochs": 1, "pretraining": "none", "labels": "hard"}),
              claim(100 * mean, conditions={"input_size": 224, "pretraining": "imagenet-22k", "selection": "best-test"}),
              claim(90.0, arch="resnet50"), claim(90.0, model="omega")]
    v = claim_verdicts(claims, records)
    assert [x["verdict"] for x in v] == ["inconclusive", "not comparable", "no matching run", "no matching run"]
    lo, hi = single_run_interval(values)
    assert v[0]["interval"] == pytest.approx((max(0.0, lo), min(1.0, hi))) and v[0]["n"] == 2
    assert v[0]["p_reach"] == pytest.approx(0.5) and v[0]["basis"] == "last epoch" and "prediction interval" in v[0]["method"]
    assert v[0]["why"].startswith("2 seeds: the claim lies inside their wide interval") and v[0]["seeds_needed"] == 3
    assert v[0]["std"] == pytest.approx(frame["acc_last"].std(ddof=1))  # the headline's mean ± std over seeds
    assert v[0]["cost"] == {"params_m": pytest.approx(frame.params.iloc[0] / 1e6), "gmacs": frame.gmacs.iloc[0], "input_size": 24}
    assert v[3]["why"] == "no complete run of omega on synthfer (runs here on synthfer: alpha, zeta)"
    assert v[1]["differs"] == ["input size: paper 224 vs run 24", "pretraining: paper imagenet-22k vs run none"]
    assert "test-selected" in v[1]["caveats"][0] and "no verdict on the claim" in v[1]["why"]
    assert v[2]["why"] == "zeta ran as resnet18, the claim is about resnet50"


def test_a_claim_on_another_architecture_is_not_shown_in_the_accuracy_cell(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "runs")
    snap = tmp_path / "runs" / "vd" / "spec.yaml"
    spec = yaml.safe_load(snap.read_text())
    spec["claims"] = [claim(87.89, arch="resface-r50")]
    snap.write_text(yaml.safe_dump(spec))
    api.report_spec("vd", tmp_path / "runs", tmp_path / "reports")
    md = (tmp_path / "reports" / "vd" / "report.md").read_text()
    assert "claimed 87.89" not in md and "**no matching run**" in md and "the claim is about resface-r50" in md
    assert "| method | backbone | dataset | params (M) | GMACs | paper | ours: mean ± std | 95 % interval | P(run ≥ claim) | Δ | verdict |" in md


def test_exports_parse_back_and_match_the_records(runs, tmp_path):
    api.report_spec("vd", runs, tmp_path / "reports", "md,html,csv,json,latex")
    page = tmp_path / "reports" / "vd"
    csv = pd.read_csv(page / "results.csv")
    records = {r.id: r for r in discover(runs / "vd")}
    assert len(csv) == 2 * len(records) and set(csv.selection) == {"last", "best-val"}
    for row in csv.itertuples():
        m = records[row.run].metrics()["test"]["last" if row.selection == "last" else "best"]
        assert row.accuracy == pytest.approx(m["accuracy"]) and row.macro_f1 == pytest.approx(m["macro_f1"])
        assert row.condition == records[row.run].condition and row.spec == "vd"
    js = json.loads((page / "results.json").read_text())
    assert len(js["results"]) == len(csv) and js["verdicts"] == []
    tex = (page / "results.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "(\\%)" in tex
    body = [ln for ln in tex.splitlines() if ln.startswith(("zeta", "alpha"))]
    frame = runs_frame(list(records.values()))
    for ln in body:
        model, cell = ln.rstrip("\\ ").split(" & ")
        assert cell.startswith(f"{100 * frame[frame.model == model].acc_last.mean():.2f} $\\pm$")


def test_rows_follow_the_spec_order_and_mixed_code_versions_are_named(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "runs")
    one = next((tmp_path / "runs" / "vd").glob("alpha__*s1*"))
    manifest = json.loads((one / "manifest.json").read_text())
    manifest["environment"].update(git_commit="0123456789abcdef", git_dirty=False)
    (one / "manifest.json").write_text(json.dumps(manifest))
    api.report_spec("vd", tmp_path / "runs", tmp_path / "reports")
    md = (tmp_path / "reports" / "vd" / "report.md").read_text()
    table = md[md.index("## Test accuracy (%), last epoch"):]
    assert table.index("| zeta |") < table.index("| alpha |")  # the spec's order, not the folders' (alpha < zeta)
    assert "made by 2 code versions" in md and "| 0123456789ab | alpha/s1 |" in md


def test_a_page_made_from_uncommitted_code_says_so(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "runs")
    for job in (tmp_path / "runs" / "vd").glob("*__*"):
        manifest = json.loads((job / "manifest.json").read_text())
        manifest["environment"].update(git_commit="0123456789abcdef", git_dirty=True)
        (job / "manifest.json").write_text(json.dumps(manifest))
    api.report_spec("vd", tmp_path / "runs", tmp_path / "reports")
    md = (tmp_path / "reports" / "vd" / "report.md").read_text()
    assert "made by code that differs from its commit" in md and "| 0123456789ab + uncommitted changes | " in md
    assert "code versions (git commit" not in md


def test_git_state_names_the_commit_and_edits_to_tracked_files(tmp_path):
    from ferbench.machine import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True, capture_output=True)

    assert git_state(tmp_path) == (None, None)
    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    git("add", "model.py")
    git("commit", "-qm", "one")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "notes.txt").write_text("untracked files are not code the run used\n")
    assert git_state(tmp_path)[1] is False
    (tmp_path / "model.py").write_text("a = 2\n")
    assert git_state(tmp_path) == (commit, True)


@pytest.mark.slow
def test_the_index_lists_every_claim_with_its_verdict(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "runs")
    snap = tmp_path / "runs" / "vd" / "spec.yaml"
    spec = yaml.safe_load(snap.read_text())
    spec["claims"] = [claim(50.0, conditions={"input_size": 24}), claim(50.0, conditions={"input_size": 224})]
    spec["description"] = "A tiny page. It has two claims."
    snap.write_text(yaml.safe_dump(spec))
    (tmp_path / "reports" / "old").mkdir(parents=True)  # a page rendered before verdicts, without its records
    (tmp_path / "reports" / "old" / "index.html").write_text("<html></html>")
    api.report_spec("vd", tmp_path / "runs", tmp_path / "reports")
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "An earlier rendering, made before verdicts" in index and index.count("An earlier rendering") == 1
    assert index.count('class="v-inconclusive"') == 1 and index.count('class="v-not-comparable"') == 1
    assert "2 seeds: the claim lies inside their wide interval" in index  # why, in one line on the index
    assert "input size: paper 224 vs run 24" in index and "A tiny page." in index and "synthfer" in index


@pytest.mark.slow
def test_the_fer_vs_ferplus_figure_names_each_side_by_its_key(runs, tmp_path, monkeypatch):
    from ferbench.report import build_context, page

    shutil.copytree(runs, tmp_path / "runs")
    job = next((tmp_path / "runs" / "vd").glob("zeta__*s0*"))
    manifest = json.loads((job / "manifest.json").read_text())
    manifest["data_notes"] = {"fer2013_vs_ferplus": {"FER+ plain vote argmax": {"fear": 819, "NF": 177},
                                                     "FER-2013 labels": {"fear": 5121}}}  # sorted keys, as written
    (job / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    seen = {}
    monkeypatch.setattr(page, "side_by_side_figure", lambda left, right, ln, rn, title: seen.update(ln=ln, title=title) or b"")
    build_context(tmp_path / "runs" / "vd")
    assert seen["ln"] == "FER-2013 labels" and "fear 5,121 vs 819" in seen["title"] and "non-faces 177" in seen["title"]


def test_latency_is_the_median_over_seeds_with_its_spread(runs, tmp_path):
    from ferbench.report.tables import metric_rows

    shutil.copytree(runs, tmp_path / "runs")
    for seed, ms, iqr in (("s0", 9.0, 0.5), ("s1", 650.0, 40.0)):
        job = next((tmp_path / "runs" / "vd").glob(f"zeta__*{seed}*"))
        m = json.loads((job / "metrics.json").read_text())
        assert m["cost"]["latency_iqr_ms_cpu"] >= 0  # recorded with the median (torch.utils.benchmark)
        m["cost"].update(latency_ms_cpu=ms, latency_iqr_ms_cpu=iqr)
        (job / "metrics.json").write_text(json.dumps(m))
    rows = {g["model"]: g for g in metric_rows(discover(tmp_path / "runs" / "vd"))}
    assert (rows["zeta"]["latency_ms"], rows["zeta"]["latency_iqr_ms"]) == (pytest.approx(329.5), pytest.approx(20.25))
    for seed in ("s0", "s1"):  # records from before the spread was recorded: no number without its spread
        job = next((tmp_path / "runs" / "vd").glob(f"zeta__*{seed}*"))
        m = json.loads((job / "metrics.json").read_text())
        del m["cost"]["latency_iqr_ms_cpu"]
        (job / "metrics.json").write_text(json.dumps(m))
    rows = {g["model"]: g for g in metric_rows(discover(tmp_path / "runs" / "vd"))}
    assert rows["zeta"]["latency_ms"] is None


@pytest.mark.slow
def test_records_published_with_a_page_render_the_same_page_without_checkpoints(runs, tmp_path):
    api.report_spec("vd", runs, tmp_path / "reports", "md,csv", with_records=True)
    records = tmp_path / "reports" / "vd" / "records"
    assert not list(records.rglob("checkpoint.pt")) and not list(records.rglob(".lock"))
    assert len(list(records.glob("vd/*/predictions.npz"))) == 4 and (records / "vd" / "spec.yaml").is_file()
    first = (tmp_path / "reports" / "vd" / "results.csv").read_text()
    api.report_spec(None, records, tmp_path / "again", "md,csv")
    assert (tmp_path / "again" / "vd" / "results.csv").read_text() == first
    from ferbench.report.compare import compare

    assert compare("zeta", "alpha", records)["datasets"]["synthfer"]

    # a user's own run of a published spec, reported into the same folder, never replaces the page
    mine = tmp_path / "mine"
    shutil.copytree(runs / "vd", mine / "vd")
    for job in list((mine / "vd").glob("zeta__*s1*")):
        shutil.rmtree(job)
    from typer.testing import CliRunner

    from ferbench.cli import app

    said = CliRunner().invoke(app, ["report", "vd", "--runs-dir", str(mine), "--out", str(tmp_path / "reports"),
                                    "--format", "md,html,csv"])
    assert said.exit_code == 0 and "went to" in said.output and "vd-local" in said.output, said.output
    assert (tmp_path / "reports" / "vd" / "results.csv").read_text() == first
    local = (tmp_path / "reports" / "vd-local" / "results.csv").read_text()
    def zeta_runs(csv: str) -> set[str]:
        return {line.rsplit(",", 1)[1] for line in csv.splitlines() if ",zeta__" in line}

    assert len(zeta_runs(first)) == 2 and len(zeta_runs(local)) == 1
    index = (tmp_path / "reports" / "index.html").read_text()
    assert 'href="./vd-local/index.html"' in index and 'href="./vd/index.html"' not in index  # vd has no html page
    # publishing (--with-records) puts its records beside the published ones and renders from them all
    extra = mine / "vd" / "zeta__synthfer__s9__0000000000"
    shutil.copytree(next((mine / "vd").glob("zeta__*s0*")), extra)
    api.report_spec("vd", mine, tmp_path / "reports", "md,csv", with_records=True)
    assert (records / "vd" / extra.name / "metrics.json").is_file()
    # the copy holds s0's job under another folder name: published beside the others, never counted twice
    assert len(zeta_runs((tmp_path / "reports" / "vd" / "results.csv").read_text())) == 2
    md = (tmp_path / "reports" / "vd" / "report.md").read_text().replace("\\", "")
    assert f"| {extra.name} | unreadable | job.yaml: holds job zeta__synthfer__s0__" in md and "copied or renamed" in md


@pytest.mark.slow
def test_per_epoch_test_accuracy_changes_no_weight_and_gives_the_paper_rule(runs, tmp_path):
    outcomes = run_spec_dict(tmp_path, {**SPEC, "eval": {"test_each_epoch": True}})
    plain = {r.id: r for r in discover(runs / "vd")}
    assert {o.job.id for o in outcomes} == set(plain)  # not part of the job's identity
    with_test = {r.id: r for r in discover(tmp_path / "runs" / "vd")}
    for job_id, rec in with_test.items():
        assert (rec.path / "predictions.npz").read_bytes() == (plain[job_id].path / "predictions.npz").read_bytes()
        assert rec.condition == plain[job_id].condition
        assert "test_acc" in rec.history()[0] and "test_acc" not in plain[job_id].history()[0]
    zeta = [r for r in with_test.values() if r.job.model.id == "zeta"]
    best = [max(row["test_acc"] for row in r.history()) for r in sorted(zeta, key=lambda r: r.job.seed)]
    (v,) = claim_verdicts([claim(50.0, conditions={"selection": "best-test"})], list(with_test.values()))
    assert v["basis"] == "best test epoch (test-selected, as the paper)" and v["mean"] == pytest.approx(np.mean(best))
    assert v["interval"] == pytest.approx(tuple(np.clip(single_run_interval(np.array(best)), 0, 1)))
    assert v["caveats"] == []  # the paper's rule is matched: no caveat about it
    (old,) = claim_verdicts([claim(50.0, conditions={"selection": "best-test"})], list(plain.values()))
    assert old["basis"] == "last epoch" and "test-selected (best-test)" in old["caveats"][0]  # not recorded: said so
    (mx,) = claim_verdicts([claim(50.0, conditions={"selection": "max-of-seeds", "seeds": 3})], list(plain.values()))
    last = np.array([r.metrics()["test"]["last"]["accuracy"] for r in sorted(plain.values(), key=lambda r: r.job.seed)
                     if r.job.model.id == "zeta"])
    assert mx["basis"] == "last epoch, best of 3 runs (as the paper)"
    assert mx["p_reach"] == pytest.approx(probability_run_reaches(last, 0.5, best_of=3))
