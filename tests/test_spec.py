from pathlib import Path

import pytest

from ferbench.errors import FerbenchError
from ferbench.spec import expand, load_spec, spec_from_dict
from ferbench.specfile import parse_set

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "name": "t",
    "datasets": [{"name": "synthfer", "options": {"n_train": 64}}],
    "models": [{"id": "a", "arch": "resnet18"}, {"id": "b", "arch": "convnext-atto", "train": {"lr": 0.01}}],
    "seeds": [0, 1],
    "train": {"epochs": 3},
    "profiles": {"smoke": {"train.epochs": 1, "datasets.*.subset": {"train": 10}}},
}


def test_expand_one_job_per_model_dataset_seed():
    jobs = expand(spec_from_dict(BASE, "t.yaml"))
    assert [(j.model.id, j.seed) for j in jobs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert jobs[2].train.lr == 0.01 and jobs[0].train.lr == 0.1
    assert all(j.train.epochs == 3 for j in jobs)


def test_job_id_is_a_hash_of_resolved_content():
    a = expand(spec_from_dict(BASE, "t.yaml"))
    b = expand(spec_from_dict(BASE, "t.yaml"))
    assert [j.id for j in a] == [j.id for j in b]
    c = expand(spec_from_dict(BASE, "t.yaml", overrides=[("train.epochs", 4)]))
    assert {j.id for j in a}.isdisjoint({j.id for j in c})
    assert len({j.id for j in a}) == 4


def test_data_location_is_not_part_of_the_identity():
    raw = {**BASE, "datasets": [{"name": "synthfer", "path": "/somewhere"}]}
    raw2 = {**BASE, "datasets": [{"name": "synthfer", "path": "/elsewhere"}]}
    assert [j.id for j in expand(spec_from_dict(raw, "x"))] == [j.id for j in expand(spec_from_dict(raw2, "x"))]


def test_profile_and_set_overrides_apply_with_wildcards_and_ids():
    s = spec_from_dict(BASE, "t.yaml", profile="smoke", overrides=parse_set(["models.b.train.lr=0.5", "seeds=[3]"]))
    jobs = expand(s)
    assert all(j.train.epochs == 1 for j in jobs)
    assert jobs[0].dataset.subset.train == 10
    assert [j.train.lr for j in jobs] == [0.1, 0.5]
    assert [j.seed for j in jobs] == [3, 3]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["models"][0].update(trian={}), "models[0].trian: unknown key"),
        (lambda d: d.update(seeds="zero"), "seeds: Input should be a valid list"),
        (lambda d: d["train"].update(epochs=-1), ".yaml: train: epochs: Input should be greater than or equal to 0"),
        (lambda d: d["train"].update(batch_size=-3), "batch_size: Input should be greater than or equal to 1"),
        (lambda d: d.pop("models"), "models: required key missing"),
        (lambda d: d["models"][1].update(id="a"), "model ids must be unique"),
        (lambda d: d["models"][1].update(recipe="nope"), "models[1].recipe: unknown recipe 'nope'"),
        (lambda d: d["models"][1].update(depends_on="zzz"), "depends_on 'zzz'"),
    ],
)
def test_bad_specs_give_one_line_naming_the_path(mutate, expected):
    import copy

    raw = copy.deepcopy(BASE)
    mutate(raw)
    with pytest.raises(FerbenchError) as e:
        spec_from_dict(raw, "t.yaml")
    msg = str(e.value)
    assert expected in msg and msg.startswith("t.yaml") and "\n" not in msg


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndatasets: [\n  - oops\n")
    with pytest.raises(FerbenchError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_spec(p)


def test_unknown_profile_and_bad_set():
    with pytest.raises(FerbenchError, match="no profile 'gpu'"):
        spec_from_dict(BASE, "t.yaml", profile="gpu")
    with pytest.raises(FerbenchError, match="expected key=value"):
        parse_set(["train.epochs"])
    with pytest.raises(FerbenchError, match="no list item with id or name 'zz'"):
        spec_from_dict(BASE, "t.yaml", overrides=[("models.zz.train.lr", 1)])


def test_recipes_resolve_paper_facts():
    raw = {**BASE, "models": [{"id": "e", "arch": "emonext-tiny", "recipe": "emonext-code"}]}
    job = expand(spec_from_dict(raw, "x"))[0]
    t = job.train
    assert (t.optimizer, t.lr, t.warmup_steps, t.restart_steps, t.clip_before_unscale) == ("adamw", 1e-3, 128, 1024, True)
    assert t.ema.decay == 0.99 and t.ema.every == 16 and t.ema.warmup_steps == 100
    assert t.augment.vflip and job.eval.tta == "tencrop" and job.eval.val_mode == "random_crop"
    assert t.epochs == 3  # the spec's train block overrides the recipe


def test_dependencies_are_ordered_first():
    raw = {**BASE, "models": [{"id": "student", "arch": "resface-r18", "depends_on": "teacher"},
                              {"id": "teacher", "arch": "resnet50"}]}
    jobs = expand(spec_from_dict(raw, "x"))
    assert [j.model.id for j in jobs][:2] == ["teacher", "teacher"]
    student = [j for j in jobs if j.model.id == "student"]
    teachers = {j.seed: j.id for j in jobs if j.model.id == "teacher"}
    assert all(s.depends_on == teachers[s.seed] for s in student)


def test_shipped_specs_validate():
    from ferbench.data import fold_count

    for path in sorted((REPO / "benchmarks").glob("*.yaml")):
        spec = load_spec(path)
        assert expand(spec, fold_count=fold_count)
        for prof in spec.profiles:
            assert expand(load_spec(path, prof), prof, fold_count)


def test_the_spec_layer_asks_the_data_layer_for_fold_counts():
    """spec never imports data: `folds:` expands through the fold count the caller passes."""
    raw = {"name": "f", "datasets": [{"name": "ckplus48", "folds": "all", "options": {"folds": 4}}],
           "models": [{"id": "r", "arch": "resnet18"}]}
    with pytest.raises(FerbenchError, match="fold count"):
        expand(spec_from_dict(raw, "f.yaml"))
    jobs = expand(spec_from_dict(raw, "f.yaml"), fold_count=lambda d: d.options["folds"])
    assert [j.dataset.options["fold"] for j in jobs] == [0, 1, 2, 3]
    with pytest.raises(FerbenchError, match="no cross-validation folds"):
        expand(spec_from_dict(raw, "f.yaml"), fold_count=lambda d: None)
