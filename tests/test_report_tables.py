"""Grouping of run records in reports: seeds of one experiment together, different conditions apart."""

from pathlib import Path

from ferbench.records import RunRecord, label_experiments
from ferbench.spec import expand, spec_from_dict

BASE = expand(spec_from_dict({"name": "t", "datasets": [{"name": "synthfer", "id": "d"}],
                              "models": [{"id": "a", "arch": "resnet18"}, {"id": "b", "arch": "resnet18"}]}, "t.yaml"))


def rec(model: str, seed: int, profile: str | None = None, **train) -> RunRecord:
    """A complete record of model `model` with the given seed, profile and train overrides."""
    base = next(j for j in BASE if j.model.id == model)
    job = base.model_copy(update={"seed": seed, "profile": profile, "train": base.train.model_copy(update=train)})
    return RunRecord(Path(f"/x/{job.id}"), {"id": job.id, "job": job.model_dump(mode="json")}, {"status": "complete"})


def test_seeds_share_a_label_and_conditions_do_not():
    rs = [rec("a", 0, epochs=5), rec("a", 1, epochs=5), rec("b", 0, epochs=5)]
    label_experiments(rs)
    assert [r.label for r in rs] == ["a", "a", "b"]
    rs = [rec("a", 0, "cpu", epochs=5), rec("a", 1, "cpu", epochs=5), rec("a", 0, "smoke", epochs=1)]
    label_experiments(rs)
    assert rs[0].label == rs[1].label != rs[2].label
    assert (rs[0].label, rs[2].label) == ("a [epochs=5]", "a [epochs=1]")  # what tells the two apart


def test_a_default_the_hash_leaves_out_is_named_by_its_value():
    rs = [rec("a", 0), rec("a", 0, adam_eps=1e-6)]  # adam_eps 1e-8 is an identity default: not in the hash
    label_experiments(rs)
    assert [r.label for r in rs] == ["a [adam_eps=1e-08]", "a [adam_eps=1e-06]"]


def test_many_differences_fall_back_to_profile_and_condition_hash():
    def rec4(seed: int, v: int, profile: str) -> RunRecord:
        return rec("a", seed, profile, epochs=v, lr=v / 10, batch_size=8 * v, input_size=8 + v)

    rs = [rec4(0, 5, "cpu"), rec4(1, 5, "cpu"), rec4(0, 1, "smoke")]
    label_experiments(rs)
    assert rs[0].label == rs[1].label != rs[2].label
    assert rs[0].label.startswith("a [cpu ") and rs[2].label.startswith("a [smoke ")
    assert rs[0].label == f"a [cpu {rs[0].condition[:6]}]"
