"""Property-based fuzzing of every command's options and of every record field (Hypothesis).

Commands: whatever their options and arguments hold (paths to pipes, symlinks, files used as folders,
`~nosuchuser`, components over 255 bytes, math markup, huge and negative numbers, integers past
Python's string-conversion limit), a command ends with exit 0, 1 or 2, no traceback, one `error:` line
when it refuses, and nothing written outside the folders the user named (`--out`, and the defaults
`reports/` and `exports/` when none is named). Records: whatever a job.yaml, manifest.json,
metrics.json, history.csv or predictions.npz field holds, reading the record for a page (`discover`)
and for its weights (`load_run`) gives a checked record or one line. Seeded and bounded for CI;
FERBENCH_FUZZ_EXAMPLES raises the counts for a local soak; FERBENCH_FUZZ_LOG=file.jsonl records each
command line, its exit status and its last error line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="the fuzzer needs hypothesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ferbench.cli import app  # noqa: E402
from ferbench.errors import FerbenchError  # noqa: E402
from ferbench.records import discover  # noqa: E402
from tests.conftest import run_spec_dict  # noqa: E402

SOAK = int(os.environ.get("FERBENCH_FUZZ_EXAMPLES", "0"))
SPEC = {"name": "fz", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
        "models": [{"id": "m", "arch": "mini-xception"}, {"id": "n", "arch": "mini-xception", "train": {"lr": 0.05}}],
        "train": {"epochs": 1, "batch_size": 16, "input_size": 48, "in_chans": 1}}  # records of < 1 MB: hundreds of copies stay small


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Finished records of SPEC, never written to (the record fuzzer copies from here)."""
    folder = tmp_path_factory.mktemp("fuzzruns")
    run_spec_dict(folder, SPEC)
    return folder


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, trained) -> Path:
    """A folder holding finished records, a face, a named pipe, a symlink into a folder nobody named,
    and a home folder: every path the fuzzer draws points inside it."""
    sb = tmp_path_factory.mktemp("fuzzcli")
    shutil.copytree(trained, sb, dirs_exist_ok=True)
    from PIL import Image

    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(sb / "face.png")
    (sb / "photos").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(sb / "photos" / "a.jpg")
    os.mkfifo(sb / "fifo")
    (sb / "outside").mkdir()
    (sb / "outside" / "keep.txt").write_text("not ferbench's")
    (sb / "link_out").symlink_to(sb / "outside")
    (sb / "link_file").symlink_to(sb / "outside" / "keep.txt")
    (sb / "home").mkdir()
    return sb


RUN = "runs/fz/" + "{job}"  # filled in with the first record's folder name
PATHS = ["out", "out/sub/deeper", "~/o", "~nosuchuser/o", "a" * 300, "b" * 300 + "/c", "fifo", "link_out", "link_out/x",
         "link_file", "face.png", "face.png/x", "", ".", "reports", "reports/index.html", "runs", "runs/fz", "outside/..",
         "sp ace/$\\frac{a}{b}$", "new\nline", "-", "nosuch/missing.yaml", "photos", "photos/a.jpg", "s.yaml",
         "/dev/full", "/proc/version", "/proc/1/nope", "/sys/nope"]  # a device, and places even root cannot write
TEXT = st.one_of(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20),
                 st.sampled_from(["$x^2$", "$\\frac{", "<script>alert(1)</script>", "a\nb", "-x", "--help", "é", "..", "m"]))
NUMBERS = st.one_of(st.integers(-(10**6), 10**6).map(str),
                    st.sampled_from(["0", "-1", "1", "3", "7", "1e400", "nan", "inf", "-0", "0x10", "1.5", "9" * 30, "9" * 5000]))
PATH = st.sampled_from(PATHS)
FORMATS = st.one_of(TEXT, st.sampled_from(["md,html", "csv,json,latex", "md,,md", "pdf", "onnx", "torchscript", "pt2"]))


def _maybe(draw, flag: str, values, p_absent: float = 0.5) -> list[str]:
    return [] if draw(st.floats(0, 1)) < p_absent else [flag, draw(values)]


def _mostly(draw, valid: str, hostile) -> str:
    """The valid value three times in four (so that hostile options reach deep code), else a hostile one."""
    return valid if draw(st.integers(0, 3)) < 3 else draw(hostile)


@st.composite
def command(draw, job: str) -> tuple[list[str], list[str]]:
    """(argv, the paths the user named for writing): one command of ferbench with hostile values."""
    run = st.one_of(st.just(f"runs/fz/{job}"), st.just(f"fz/{job}"), PATH)
    which = draw(st.sampled_from(["predict", "export", "report", "compare", "eval", "data plot", "cost", "data info", "plan"]))
    outs: list[str] = []
    if which == "plan":
        argv = ["plan", _mostly(draw, "s.yaml", PATH), "--no-estimate", *_maybe(draw, "--runs-dir", PATH),
                *_maybe(draw, "--set", TEXT), *_maybe(draw, "--profile", TEXT), *_maybe(draw, "--device", TEXT),
                *_maybe(draw, "--data-root", PATH)]
    elif which == "eval":  # nothing trains: m and n's records hold the training of an evaluation-only change
        argv = ["eval", "s.yaml", "--set", draw(st.sampled_from(["eval.tta=flip", "eval.tta=none"])), "--device", "cpu",
                *_maybe(draw, "--set", TEXT, 0.6)]
        outs = ["runs/fz"]  # eval writes its new records beside the ones it reuses
    elif which == "report":
        out = _maybe(draw, "--out", PATH, 0.3)
        argv = ["report", *([_mostly(draw, "fz", st.one_of(TEXT, PATH))] if draw(st.booleans()) else []),
                *_maybe(draw, "--runs-dir", PATH, 0.8), *out, *_maybe(draw, "--format", FORMATS, 0.6),
                *(["--with-records"] if draw(st.floats(0, 1)) < 0.2 else [])]
        outs = [out[1] if out else "reports"]
    elif which == "compare":
        out = _maybe(draw, "--out", PATH, 0.3)
        argv = ["compare", _mostly(draw, "m", TEXT), _mostly(draw, "n", TEXT), *_maybe(draw, "--runs-dir", PATH, 0.8),
                *_maybe(draw, "--dataset", TEXT, 0.8), *out, "--json"]
        outs = [out[1]] if out else []
    elif which == "predict":
        out = _maybe(draw, "--out", st.one_of(PATH, st.sampled_from(["p.csv", "p.json", "p.txt", "out/p.csv"])), 0.4)
        argv = ["predict", _mostly(draw, f"runs/fz/{job}", run), _mostly(draw, "face.png", st.one_of(st.just("photos"), PATH)),
                *out, *_maybe(draw, "--top-k", NUMBERS), *_maybe(draw, "--batch-size", NUMBERS), *_maybe(draw, "--tta", TEXT, 0.7),
                *_maybe(draw, "--which", TEXT, 0.8), *_maybe(draw, "--device", TEXT, 0.8)]
        outs = [out[1]] if out else []
    elif which == "export":
        out = _maybe(draw, "--out", st.one_of(PATH, st.sampled_from(["m.pt", "m.onnx", "m.json", "out/m.pt2"])), 0.3)
        argv = ["export", _mostly(draw, f"runs/fz/{job}", run), "--format", _mostly(draw, "torchscript", FORMATS), *out,
                *_maybe(draw, "--tolerance", NUMBERS, 0.7), *_maybe(draw, "--which", TEXT, 0.8)]
        outs = [out[1]] if out else ["exports"]
    elif which == "data info":
        argv = ["data", "info", _mostly(draw, "synthfer", TEXT), *_maybe(draw, "--path", PATH, 0.7),
                *_maybe(draw, "--option", st.one_of(TEXT, NUMBERS.map(lambda n: f"n_train={n}")))]
    elif which == "data plot":
        out = _maybe(draw, "--out", PATH, 0.3)
        argv = ["data", "plot", _mostly(draw, "synthfer", TEXT), *out,
                *_maybe(draw, "--option", NUMBERS.map(lambda n: f"n_train={n}"), 0.6)]
        outs = [out[1] if out else "reports/data"]
    else:
        argv = ["cost", _mostly(draw, "mini-xception", TEXT), *_maybe(draw, "--input-size", NUMBERS),
                *_maybe(draw, "--num-classes", NUMBERS), *_maybe(draw, "--in-chans", NUMBERS), "--json"]
    return argv, outs


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root (links not followed) with what would show a write: size, mtime, kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = os.lstat(p)
            out[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns, st_.st_mode) if name in filenames else ("dir",)
    return out


def _allowed(rel: str, named: list[Path], sandbox: Path) -> bool:
    """Whether a changed path lies inside a folder the user named, is that file, its export sidecar, or
    a folder on the way to one of them. Lock files are ours to take; ~/.cache and ~/.config belong to
    the libraries (matplotlib's font list)."""
    p = (sandbox / rel).absolute()
    for target in named:
        if p == target or target in p.parents or p == target.with_suffix(".json") or p in target.parents:
            return True
        if target.name == "index.html" and p.parent == target.parent:  # compare links itself from a ferbench index
            return True
    return rel.endswith(".lock") or rel.split("/")[:2] in (["home", ".cache"], ["home", ".config"])  # libraries' caches


def _named(outs: list[str], sandbox: Path) -> list[Path]:
    named = []
    for o in outs:
        path = Path(os.path.expanduser(o))
        path = (path if path.is_absolute() else sandbox / path).absolute()
        named.append(path)
        named.append(Path(os.path.realpath(path)))  # a folder the user named through a link of theirs is theirs
        named.append(path.parent / "index.html")  # compare --out and report --out link from their parent's index
    return named


@settings(max_examples=SOAK or 120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_command_line_ends_in_an_exit_status_and_writes_only_where_asked(sandbox, monkeypatch, data):
    job = next((sandbox / "runs" / "fz").glob("m__*")).name
    argv, outs = data.draw(command(job))
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("HOME", str(sandbox / "home"))
    monkeypatch.setenv("FERBENCH_DATA", str(sandbox / "nodata"))
    before = _tree(sandbox)
    r = CliRunner().invoke(app, argv)
    after = _tree(sandbox)
    said = r.stdout + r.stderr
    if os.environ.get("FERBENCH_FUZZ_LOG"):  # a soak's record of what each command line reached
        with open(os.environ["FERBENCH_FUZZ_LOG"], "a") as log:
            log.write(json.dumps({"argv": argv, "exit": r.exit_code, "stderr": r.stderr[-300:]}) + "\n")
    assert r.exit_code in (0, 1, 2), (argv, said)
    assert r.exception is None or isinstance(r.exception, SystemExit), (argv, repr(r.exception))
    assert "Traceback" not in said, (argv, said)
    if r.exit_code == 2 and not said.lstrip().startswith("Usage"):
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (argv, r.stderr)
    named = _named(outs, sandbox)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    stray = [c for c in changed if not _allowed(c, named, sandbox)]
    assert not stray, (argv, stray)
    assert (sandbox / "outside" / "keep.txt").read_text() == "not ferbench's"


# ---- record fields -------------------------------------------------------------------------------

BIG = "__5000_digits__"  # an integer past Python's string-conversion limit, written into the file as its digits
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.just(BIG), st.floats(),
    TEXT, st.sampled_from(["$\\frac{", "2026-12-05", "x" * 5000]),
    st.lists(st.one_of(st.integers(-5, 5), TEXT, st.none()), max_size=5),
    st.dictionaries(TEXT, st.one_of(st.integers(), TEXT), max_size=3),
)
JOB_FIELDS = [("job", "model", "arch"), ("job", "model", "id"), ("job", "model", "options"), ("job", "seed"),
              ("job", "train", "input_size"), ("job", "train", "in_chans"), ("job", "train", "normalize"),
              ("job", "eval", "tta"), ("job", "dataset", "name"), ("job", "dataset", "options"), ("job",), ("id",)]
MANIFEST_FIELDS = [("status",), ("classes",), ("image_shape",), ("class_counts",), ("environment",),
                   ("data_content_sha256",), ("image_shape", 0), ("classes", 0)]
METRICS_FIELDS = [("classes",), ("test", "last", "accuracy"), ("test", "last", "confusion"), ("test", "best"),
                  ("test", "last", "per_class_recall"), ("cost",), ("test",), ("val",), ("best_epoch",)]
NPZ_ARRAYS = ["test.labels", "test.last.logits", "test.targets", "test.best.logits", "val.labels"]


def _set(obj, path, value):
    node = obj
    for key in path[:-1]:
        node = node[key] if isinstance(node, list) else node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            return
    if isinstance(node, list):
        if path[-1] < len(node):
            node[path[-1]] = value
    else:
        node[path[-1]] = value


def _hostile_array(kind: str, like: np.ndarray) -> np.ndarray:
    n = like.shape[0]
    return {"empty": np.zeros((0,), like.dtype), "nan": np.full(like.shape, np.nan), "huge": np.full(like.shape, 1e308),
            "negative": -np.ones(like.shape, np.int64), "strings": np.array(["x"] * n),
            "3d": np.zeros((n, 2, 2)), "bool": np.ones(like.shape, bool), "int8": like.astype(np.int8),
            "transposed": like.T.copy(), "scalar": np.array(3.0)}[kind]


FILE_KINDS = ["link-to-dev-zero", "pipe", "folder", "sparse-65-mib", "empty", "link-to-a-file-elsewhere"]


def _replace_file(path: Path, kind: str, elsewhere: Path) -> None:
    """The whole file swapped for something that is not a record file (a reader must neither block,
    nor read without end, nor follow it anywhere it should not)."""
    path.unlink()
    if kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "pipe":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse-65-mib":
        with open(path, "wb") as f:
            f.truncate(65 << 20)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        elsewhere.write_text("not a record file")
        path.symlink_to(elsewhere)


@settings(max_examples=SOAK or 150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(file=st.sampled_from(["job.yaml", "manifest.json", "metrics.json", "history.csv", "predictions.npz", "checkpoint.pt"]),
       data=st.data())
def test_any_value_in_any_record_field_is_a_checked_record_or_one_line(trained, tmp_path_factory, file, data):
    work = tmp_path_factory.mktemp("rec")
    try:
        _damage_and_read(trained, work, file, data)
    finally:
        shutil.rmtree(work)  # hundreds of examples: none is kept


def _damage_and_read(trained: Path, work: Path, file: str, data) -> None:
    from ferbench.trained import load_run

    src = next((trained / "runs" / "fz").glob("m__*"))
    job_dir = work / "fz" / src.name
    shutil.copytree(src, job_dir)
    path = job_dir / file
    kind = data.draw(st.sampled_from(["field"] * (3 if file != "checkpoint.pt" else 0) + FILE_KINDS))
    if kind != "field":
        _replace_file(path, kind, work / "elsewhere.txt")
    elif file == "job.yaml":
        obj = yaml.safe_load(path.read_text())
        _set(obj, data.draw(st.sampled_from(JOB_FIELDS)), data.draw(HOSTILE))
        text = yaml.safe_dump(obj) if data.draw(st.booleans()) else yaml.safe_dump(obj).replace("id:", "id: &a", 1)
        path.write_text(text.replace(BIG, "9" * 5000))
    elif file in ("manifest.json", "metrics.json"):
        obj = json.loads(path.read_text())
        _set(obj, data.draw(st.sampled_from(MANIFEST_FIELDS if file == "manifest.json" else METRICS_FIELDS)), data.draw(HOSTILE))
        path.write_text(json.dumps(obj, default=str).replace(f'"{BIG}"', "9" * 5000))
    elif file == "history.csv":
        rows = [line.split(",") for line in path.read_text().splitlines()]
        r, c = data.draw(st.integers(0, len(rows) - 1)), data.draw(st.integers(0, len(rows[0]) - 1))
        rows[r][c] = str(data.draw(st.one_of(TEXT, st.sampled_from(["nan", "inf", "1e400", "", "9" * 5000]))))
        path.write_text("\n".join(",".join(row) for row in rows) + "\n")
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        name = data.draw(st.sampled_from(NPZ_ARRAYS))
        if name in arrays:
            arrays[name] = _hostile_array(data.draw(st.sampled_from(["empty", "nan", "huge", "negative", "strings", "3d",
                                                                     "bool", "int8", "transposed", "scalar"])), arrays[name])
        np.savez(path, **arrays)
    unreadable: list[dict[str, str]] = []
    records = discover(work / "fz", unreadable)
    for rec in records:  # a record either checks (then everything report reads is there) or says why not in one line
        if rec.complete:
            rec.metrics()
            rec.predictions()
            rec.history()
        else:
            assert "\n" not in rec.manifest.get("failure", ""), rec.manifest
    assert all("\n" not in u["reason"] for u in unreadable)
    try:
        load_run(job_dir)
    except FerbenchError as e:
        assert "\n" not in str(e).strip() and "Traceback" not in str(e)


HOSTILE_NAMES = ["$\\frac{", "a\nb", "<script>x</script>", "$x^2$", "_", "é" * 200, "| x |"]


def test_hostile_text_in_records_renders_as_text(trained, tmp_path):
    """Class names a record may hold (math markup matplotlib would parse, line breaks, HTML, table
    pipes, 200 characters) render as written: the page is made (figures included), no script is
    live in the HTML, and every Markdown table row keeps its columns."""
    runs = tmp_path / "runs"
    shutil.copytree(trained / "runs", runs)
    for job_dir in (runs / "fz").glob("*__*"):
        for name in ("manifest.json", "metrics.json"):
            obj = json.loads((job_dir / name).read_text())
            obj["classes"] = HOSTILE_NAMES
            if "class_counts" in obj:
                for split in obj["class_counts"].values():
                    split["per_class"] = {c: n for c, n in zip(HOSTILE_NAMES, split["per_class"].values())}
            (job_dir / name).write_text(json.dumps(obj))
    r = CliRunner().invoke(app, ["report", str(runs / "fz"), "--out", str(tmp_path / "reports")])
    assert r.exit_code == 0 and r.exception is None, r.output
    html = (tmp_path / "reports" / "fz" / "index.html").read_text()
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    md = (tmp_path / "reports" / "fz" / "report.md").read_text()
    for table in [block for block in md.split("\n\n") if block.lstrip().startswith("|")]:
        widths = {line.replace("\\|", "").count("|") for line in table.strip().splitlines()}
        assert len(widths) == 1, table
    assert list((tmp_path / "reports" / "fz" / "figures").glob("confusion_*.png"))
