"""Whole-step CUDA graphs (`train.cuda_graphs`), checked on the CPU.

CUDA's capture cannot run here, so `Recorded` stands in for it with a graph's two properties that
matter to training: capturing runs nothing (every tensor is put back as it was), and a replay runs
the recorded step at the lr it was captured with, writing its outputs into the same tensors. With
that, a fit through `GraphedStep` must end on exactly the weights of the eager fit: the warm-up
steps leave no trace and the lr drops are captured again.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ferbench.data import FerDataset, Split
from ferbench.engine import train
from ferbench.engine.graphs import GraphedStep
from ferbench.models import create_model
from ferbench.spec import EvalConfig, TrainConfig, cuda_graph_blockers


class Recorded(GraphedStep):
    """GraphedStep with a CPU stand-in for CUDA's stream and capture (see the module docstring)."""

    def _side_stream(self):
        return contextlib.nullcontext()

    def _record(self, fn):
        saved = self.snapshot()
        out = tuple(t.detach().clone() for t in fn())  # run once for the output shapes, then undone
        self.put_back(saved)
        self.opt.zero_grad(set_to_none=True)
        lrs = [g["lr"] for g in self.opt.param_groups]

        class Graph:
            def replay(_) -> None:
                now = [g["lr"] for g in self.opt.param_groups]
                for g, lr in zip(self.opt.param_groups, lrs):
                    g["lr"] = lr  # a replay runs at the lr the graph was captured with
                self.opt.zero_grad(set_to_none=True)  # a replay overwrites the graph's gradients
                logits, loss = fn()
                out[0].copy_(logits.detach())
                out[1].copy_(loss.detach())
                for g, lr in zip(self.opt.param_groups, now):
                    g["lr"] = lr

        return Graph(), out


def _dataset(n: int = 96) -> FerDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 7, n)
    targets = rng.dirichlet(np.ones(7), n).astype(np.float32)
    return FerDataset("votes", [str(i) for i in range(7)], {"train": Split(images, labels, targets=targets),
                                                          "test": Split(images[:32], labels[:32], targets=targets[:32])})


def _fit(tmp_path, graphs: bool, monkeypatch) -> tuple[dict, list, int]:
    """ResFace-R18 (BatchNorm, momentum SGD with weight decay, LDL on votes) for 3 epochs, lr x0.1 each epoch."""
    made: list[Recorded] = []

    def graphed(*args):
        made.append(Recorded(*args))
        return made[-1]

    monkeypatch.setattr(train, "graphs_run", lambda cfg, device: graphs)
    monkeypatch.setattr(train, "GraphedStep", graphed)
    cfg = TrainConfig(epochs=3, batch_size=32, input_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, loss="ldl",
                      schedule="step", step_size=1, gamma=0.1, augment={"hflip": True}, cuda_graphs=True)
    torch.manual_seed(0)
    res = train.fit(create_model("resface-r18", 7, 16), _dataset(), cfg, EvalConfig(splits=["test"]), 0,
                    torch.device("cpu"), tmp_path / ("graphs" if graphs else "eager"))
    captures = made[0].captures if made else 0
    return {k: v.clone() for k, v in res.model.state_dict().items()}, res.history, captures


def test_a_graphed_fit_ends_on_the_eager_fits_weights(tmp_path, monkeypatch):
    eager, eager_hist, _ = _fit(tmp_path, False, monkeypatch)
    graphed, graph_hist, captures = _fit(tmp_path, True, monkeypatch)
    assert captures == 3  # one capture per lr: 0.05, 0.005, 0.0005
    assert [round(r["lr"], 10) for r in graph_hist] == [round(r["lr"], 10) for r in eager_hist]
    for k in eager:  # weights, BatchNorm statistics and batch counts: the warm-up steps left no trace
        assert torch.equal(eager[k], graphed[k]), k
    assert [r["train_loss"] for r in graph_hist] == [r["train_loss"] for r in eager_hist]


def test_the_spec_refuses_what_a_graph_cannot_hold():
    ok = TrainConfig(optimizer="sgd", schedule="step", cuda_graphs=True)
    assert cuda_graph_blockers(ok) == []
    for bad, words in [({"optimizer": "adamw"}, "optimizer adamw"), ({"schedule": "cosine"}, "changes every step"),
                       ({"warmup_steps": 10}, "changes every step"), ({"amp": "fp16"}, "loss scaling"),
                       ({"drop_last": False}, "drop_last: false")]:
        with pytest.raises(ValidationError, match=words):
            TrainConfig(**{"schedule": "step", "cuda_graphs": True, **bad})


def test_cuda_graphs_is_not_part_of_a_jobs_identity():
    from ferbench.spec import expand, spec_from_dict

    job = expand(spec_from_dict({"name": "g", "datasets": [{"name": "synthfer"}], "models": [{"id": "r", "arch": "resnet18"}]}, "g.yaml"))[0]
    graphed = job.model_copy(update={"train": job.train.model_copy(update={"schedule": "step", "cuda_graphs": True})})
    stepped = job.model_copy(update={"train": job.train.model_copy(update={"schedule": "step"})})
    assert (graphed.id, graphed.condition()) == (stepped.id, stepped.condition())
    lr = job.model_copy(update={"train": job.train.model_copy(update={"schedule": "step", "lr": 0.5})})
    assert lr.condition() != stepped.condition() and lr.id != stepped.id  # the hash does see the recipe


def test_the_manifest_says_whether_the_step_was_a_graph():
    cfg = TrainConfig(schedule="step", cuda_graphs=True)
    assert train.precision(cfg, torch.device("cpu"))["cuda_graphs"] is False  # the CPU runs the eager step
