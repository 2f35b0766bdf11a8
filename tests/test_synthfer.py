import numpy as np
import pytest

from ferbench.data import load_dataset
from ferbench.data.synthetic import CLASSES, Options, generate


def test_deterministic_and_well_formed():
    o = Options(n_train=300, n_val=50, n_test=50)
    a, b = generate(300, 5, o), generate(300, 5, o)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert a.images.shape == (300, 48, 48) and a.images.dtype == np.uint8
    assert np.allclose(a.targets.sum(1), 1) and a.targets.shape == (300, len(CLASSES))
    # the hard label is a vote argmax (ties broken by the true distribution)
    assert np.array_equal(a.targets[np.arange(300), a.labels], a.targets.max(1))
    assert not np.array_equal(generate(300, 6, o).images, a.images)


def test_options_change_the_data_and_the_votes():
    clean = generate(200, 1, Options(ambiguity=0.0, pose=0, occlusion=0, noise=0, lighting=0))
    messy = generate(200, 1, Options(ambiguity=1.0))
    # with no ambiguity, annotators agree far more often
    assert clean.targets.max(1).mean() > messy.targets.max(1).mean() + 0.15
    assert len(np.unique(clean.labels)) == 7


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    import ferbench.data.synthetic as synthetic

    first = load_dataset("synthfer", {"n_train": 500, "seed": 9})
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("the cached faces were generated again"))
    ds = load_dataset("synthfer", {"n_train": 500, "seed": 9})
    assert len(ds.splits["train"]) == 500 and np.array_equal(ds.splits["train"].images, first.splits["train"].images)
