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
    assert (rs[0].label, rs[2].label) == ("a [epochs=5]", "a [epochs=1]")  # what tells the two apart


def test_many_differences_fall_back_to_profile_and_condition_hash():
    def rec4(seed, v, profile):
        job = {"id": f"a-{seed}-{v}", "job": {"model": {"id": "a"}, "dataset": {"id": "d"}, "seed": seed, "profile": profile,
                                              "train": {"epochs": v, "lr": v / 10, "batch_size": 8 * v, "input_size": 8 + v}}}
        return RunRecord(Path(f"/x/a-{seed}-{v}"), job, {"status": "complete"})

    rs = [rec4(0, 5, "cpu"), rec4(1, 5, "cpu"), rec4(0, 1, "smoke")]
    label_experiments(rs)
    assert rs[0].label == rs[1].label != rs[2].label
    assert rs[0].label.startswith("a [cpu ") and rs[2].label.startswith("a [smoke ")
