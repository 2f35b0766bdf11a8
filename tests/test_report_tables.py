"""Grouping of run records in reports: seeds of one experiment together, different conditions apart."""

from pathlib import Path

from ferbench.records import RunRecord, label_experiments


def rec(model, seed, epochs, profile=None):
    job = {"id": f"{model}-{seed}-{epochs}", "job": {"model": {"id": model}, "dataset": {"id": "d"}, "seed": seed,
                                                     "train": {"epochs": epochs}, "profile": profile}}
    return RunRecord(Path(f"/x/{model}-{seed}-{epochs}"), job, {"status": "complete"})


def test_seeds_share_a_label_and_conditions_do_not():
    rs = [rec("a", 0, 5), rec("a", 1, 5), rec("b", 0, 5)]
    label_experiments(rs)
    assert [r.label for r in rs] == ["a", "a", "b"]
    rs = [rec("a", 0, 5, "cpu"), rec("a", 1, 5, "cpu"), rec("a", 0, 1, "smoke")]
    label_experiments(rs)
    assert rs[0].label == rs[1].label != rs[2].label
    assert rs[0].label.startswith("a [cpu ") and rs[2].label.startswith("a [smoke ")
