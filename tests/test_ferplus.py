"""FER+ label protocols, pinned against an independent reading of the official rules."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ferbench.data import load_dataset
from ferbench.data.ferplus import CLASSES, process_votes
from ferbench.errors import FerbenchError
from tests.conftest import write_fer_csv

HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
MODES = ["majority", "probability", "crossentropy", "multi_target"]


def expected_label(votes, mode):
    """Independent implementation from REFERENCE.md §1; returns a class index, or None if dropped."""
    v = np.where(np.asarray(votes, float) <= 1, 0.0, np.asarray(votes, float))
    total = v.sum()
    if mode == "majority":
        k = int(np.argmax(v))
        ok = v[k] > total / 2
        return k if ok and k < 8 else None
    if mode == "multi_target":
        chosen = {i: v[i] for i in range(10) if v[i] >= 0.3 * total and total > 0}
        if sum(chosen.values()) <= total / 2:
            return None
    else:
        chosen, covered, count, stop = {}, 0.0, 0, False
        for val in sorted(set(v.tolist()), reverse=True):
            if not (covered < 0.75 * total and count < 3):
                break
            for i in [i for i in range(10) if v[i] == val]:
                chosen[i] = val
                covered += val
                count += 1
                if i >= 8:
                    if sum(chosen.values()) > val:
                        del chosen[i]
                        count -= 1
                    stop = True
                    break
            if stop:
                break
        if sum(chosen.values()) <= total / 2 or count > 3:
            return None
    best = max(chosen.values())
    k = min(i for i, x in chosen.items() if x == best)
    return k if k < 8 else None


def random_votes(rng, n):
    rows = []
    for _ in range(n):
        kind = rng.integers(0, 4)
        if kind == 0:  # clear majority
            v = np.zeros(10, int)
            v[rng.integers(0, 8)] = rng.integers(6, 11)
            rest = 10 - v.sum()
            np.add.at(v, rng.integers(0, 10, rest), 1)
        elif kind == 1:  # ties, unknown and NF included
            v = np.zeros(10, int)
            a, b = rng.choice(10, 2, replace=False)
            v[a] = v[b] = rng.integers(2, 6)
        else:  # anything
            v = rng.multinomial(10, rng.dirichlet(np.ones(10) * 0.5))
        rows.append(v)
    return np.array(rows)


@pytest.fixture
def small_ferplus(tmp_path):
    rng = np.random.default_rng(3)
    n_per = {"Training": 120, "PublicTest": 40, "PrivateTest": 40}
    rows, vote_lines, names = [], [], []
    k = 0
    for usage, n in n_per.items():
        votes = random_votes(rng, n)
        for v in votes:
            name = f"fer{k:07d}.png"
            if rng.random() < 0.05:
                name = ""  # dropped by the official export
            names.append(name)
            rows.append((int(rng.integers(0, 7)), rng.integers(0, 256, (48, 48)), usage))
            vote_lines.append((usage, name, v))
            k += 1
    # a reused name: the earlier row is overwritten by the later one
    vote_lines[3] = (vote_lines[3][0], vote_lines[10][1] or "dup.png", vote_lines[3][2])
    if not vote_lines[10][1]:
        vote_lines[10] = (vote_lines[10][0], "dup.png", vote_lines[10][2])
    write_fer_csv(tmp_path / "fer2013" / "fer2013.csv", rows)
    text = HEADER + "\n" + "\n".join(f"{u},{n}," + ",".join(map(str, v)) for u, n, v in vote_lines) + "\n"
    (tmp_path / "ferplus").mkdir()
    (tmp_path / "ferplus" / "fer2013new.csv").write_text(text)
    return tmp_path, vote_lines


def expected_counts(vote_lines, mode):
    last = {}
    for i, (_, name, _) in enumerate(vote_lines):
        if name:
            last[name] = i
    out = {"train": [0] * 8, "val": [0] * 8, "test": [0] * 8}
    split_of = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    for i in sorted(last.values()):
        usage, _, v = vote_lines[i]
        k = expected_label(v, mode if usage == "Training" else "majority")
        if k is not None:
            out[split_of[usage]][k] += 1
    return out


@pytest.mark.parametrize("mode", MODES)
def test_surviving_counts_match_the_official_rules(small_ferplus, mode):
    root, vote_lines = small_ferplus
    ds = load_dataset("ferplus", {"protocol": mode}, data_root=str(root))
    want = expected_counts(vote_lines, mode)
    got = {s: np.bincount(ds.splits[s].labels, minlength=8).tolist() for s in ("train", "val", "test")}
    assert got == want
    assert ds.classes == CLASSES
    t = ds.splits["train"].targets
    assert np.allclose(t.sum(1), 1) and t.shape[1] == 8


def test_data_info_cli_protocol(small_ferplus):
    root, vote_lines = small_ferplus
    r = subprocess.run([sys.executable, "-m", "ferbench", "data", "info", "ferplus", "--protocol", "crossentropy",
                        "--data-root", str(root), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    want = expected_counts(vote_lines, "crossentropy")
    assert info["splits"]["train"]["total"] == sum(want["train"])


@pytest.mark.parametrize("votes, mode, label", [
    ([0, 0, 0, 0, 0, 0, 0, 0, 4, 6], "majority", 9),  # NF majority -> dropped later
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "majority", 8),  # no strict majority -> unknown
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "crossentropy", 0),  # tie: both kept, argmax first
    ([1, 1, 1, 7, 0, 0, 0, 0, 0, 0], "majority", 3),  # single votes are outliers
    ([3, 3, 0, 0, 0, 0, 0, 0, 4, 0], "probability", 8),  # unknown first -> unknown
])
def test_process_votes_cases(votes, mode, label):
    assert int(np.argmax(process_votes(np.array(votes), mode))) == label


def test_bad_votes_are_refused(tmp_path, small_ferplus):
    root, _ = small_ferplus
    p = root / "ferplus" / "fer2013new.csv"
    lines = p.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",x"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerbenchError, match=r"line 6: column 'NF': vote count 'x'"):
        load_dataset("ferplus", data_root=str(root))


@pytest.mark.realdata
@pytest.mark.slow
def test_real_ferplus_export_and_majority(real_data):
    ds = load_dataset("ferplus", {"protocol": "majority"}, data_root=str(real_data))
    assert ds.notes["exported_images"] == {"train": 28558, "val": 3579, "test": 3573}
    import pandas as pd

    raw = pd.read_csv(real_data / "ferplus" / "fer2013new.csv", keep_default_na=False)
    lines = [(r[0], r[1].strip(), [int(x) for x in r[2:]]) for r in raw.itertuples(index=False)]
    for mode in MODES:
        d = load_dataset("ferplus", {"protocol": mode}, data_root=str(real_data))
        want = expected_counts(lines, mode)
        got = {s: np.bincount(d.splits[s].labels, minlength=8).tolist() for s in ("train", "val", "test")}
        assert got == want, mode


def write_label_csv(root, vote_lines, rng):
    """FER2013{Train,Valid,Test}/label.csv for the small table: one row per exported name, the votes of
    some rows changed (the two official tables disagree), shuffled like the real files are not."""
    last = {}
    for i, (_, name, _) in enumerate(vote_lines):
        if name:
            last[name] = i
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    lines = {f: [] for f in folders.values()}
    table = []
    for name, i in sorted(last.items(), key=lambda kv: kv[1]):
        usage, _, v = vote_lines[i]
        v = random_votes(rng, 1)[0] if rng.random() < 0.3 else v
        lines[folders[usage]].append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, v)))
        table.append((usage, name, v))
    for folder, rows in lines.items():
        (root / "ferplus" / folder).mkdir()
        (root / "ferplus" / folder / "label.csv").write_text("\n".join(rows) + "\n")
    return table


@pytest.mark.parametrize("mode", MODES)
def test_the_official_trainers_vote_table_gives_its_own_counts(small_ferplus, mode):
    root, vote_lines = small_ferplus
    table = write_label_csv(root, vote_lines, np.random.default_rng(5))
    ds = load_dataset("ferplus", {"protocol": mode, "votes": "label_csv"}, data_root=str(root))
    got = {s: np.bincount(ds.splits[s].labels, minlength=8).tolist() for s in ("train", "val", "test")}
    assert got == expected_counts(table, mode)
    assert ds.notes["votes"].startswith("FER2013{Train,Valid,Test}/label.csv")
    assert any("label.csv" in f for f in ds.files)  # its hashes are recorded with the run
    other = load_dataset("ferplus", {"protocol": mode}, data_root=str(root))
    assert other.notes["votes"] == "fer2013new.csv"


def test_a_label_csv_naming_an_image_fer2013new_does_not_export_is_refused(small_ferplus):
    root, vote_lines = small_ferplus
    write_label_csv(root, vote_lines, np.random.default_rng(5))
    p = root / "ferplus" / "FER2013Valid" / "label.csv"
    p.write_text(p.read_text() + 'fer9999999.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(FerbenchError, match=r"FER2013Valid/label.csv: line \d+: image 'fer9999999.png' is not a Valid image"):
        load_dataset("ferplus", {"votes": "label_csv"}, data_root=str(root))
    (root / "ferplus" / "FER2013Test" / "label.csv").unlink()
    with pytest.raises(FerbenchError, match="FER2013Test/label.csv .*file not found"):
        load_dataset("ferplus", {"votes": "label_csv"}, data_root=str(root))


@pytest.mark.realdata
@pytest.mark.slow
def test_real_label_csv_counts_under_every_protocol(real_data):
    import pandas as pd

    table = []
    for usage, folder in (("Training", "FER2013Train"), ("PublicTest", "FER2013Valid"), ("PrivateTest", "FER2013Test")):
        raw = pd.read_csv(real_data / "ferplus" / folder / "label.csv", header=None, keep_default_na=False)
        table += [(usage, r[0], [int(x) for x in r[2:]]) for r in raw.itertuples(index=False)]
    assert len(table) == 28558 + 3579 + 3573
    for mode in MODES:
        d = load_dataset("ferplus", {"protocol": mode, "votes": "label_csv"}, data_root=str(real_data))
        got = {s: np.bincount(d.splits[s].labels, minlength=8).tolist() for s in ("train", "val", "test")}
        assert got == expected_counts(table, mode), mode


def test_multi_target_loss_is_the_official_formula():
    import torch

    from ferbench.engine.losses import multi_target_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 8)
    processed = torch.zeros(6, 8)
    processed[torch.arange(6), torch.randint(0, 8, (6,))] = 0.6
    processed[:, 3] += 0.4
    t = (1 - 0.001) * (processed > 0).float() + 0.001  # FERPlus _process_target
    want = -torch.log((t * torch.softmax(logits, 1)).max(1).values).mean()  # FERPlus cost_func, per sample
    assert torch.allclose(multi_target_loss(logits, processed), want, atol=1e-6)


@pytest.mark.parametrize("protocol, loss, extra", [
    ("majority", "ce", {}), ("crossentropy", "ldl", {"ldl_reduction": "sample", "ldl_source": "votes"}),
    ("probability", "sampled", {}), ("multi_target", "multi_target", {}),
])
def test_the_protocol_picks_the_official_loss_unless_the_spec_does(protocol, loss, extra):
    from ferbench.spec import Spec, expand

    def spec(**train):
        return Spec.model_validate({"name": "p", "datasets": [{"name": "ferplus", "options": {"protocol": protocol}}],
                                    "models": [{"id": "m", "arch": "resnet18", "train": train}]})

    (job,) = expand(spec())
    assert job.train.loss == loss and all(getattr(job.train, k) == v for k, v in extra.items())
    (explicit,) = expand(spec(loss="ce"))
    assert explicit.train.loss == "ce"  # a spec's own choice wins (ResFace's LDL paths stay explicit choices)


def test_probability_draws_from_the_processed_distribution(small_ferplus):
    root, vote_lines = small_ferplus
    ds = load_dataset("ferplus", {"protocol": "probability"}, data_root=str(root))
    assert ds.notes["soft_targets"] == "protocol"
    last = {}
    for i, (_, name, _) in enumerate(vote_lines):
        if name:
            last[name] = i
    train_rows = [i for i in sorted(last.values()) if vote_lines[i][0] == "Training"
                  and expected_label(vote_lines[i][2], "probability") is not None]
    for target, i in zip(ds.splits["train"].targets, train_rows):
        p = process_votes(np.asarray(vote_lines[i][2], float), "probability")[:8]
        assert np.allclose(target, p / p.sum(), atol=1e-6)
    votes = load_dataset("ferplus", {"protocol": "probability", "soft_targets": "votes"}, data_root=str(root))
    assert votes.notes["soft_targets"] == "votes"
