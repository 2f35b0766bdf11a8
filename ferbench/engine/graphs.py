"""Whole-step CUDA graphs (`train.cuda_graphs`): a training step replayed as one graph.

Why: at the papers' batch of 64 a ResNet-18-sized step at 224x224 on an H200 is bound by the host,
not the GPU: `ferbench bench profile` counted 627-662 kernel launches a step for ResFace-R18 with the
device busy 19-58 % of the time, and the eager loop trained at ~3,000-3,500 img/s, 4-6 % of the bf16
peak (reports/bench/README.md). A captured graph issues the forward, the loss, the backward and the
fused SGD update with one launch.

What stays the same: the arithmetic. The graph runs the kernels the eager step runs, in the same order,
on the same weights and optimizer state (captured in place, so checkpoints, EMA and evaluation see
the live tensors). Three eager warm-up steps must run before a capture (cuDNN and autograd set up
their workspaces); they run on copies of the first batch and everything they change (weights,
BatchNorm statistics, momentum buffers) is put back, so no training step is added. Momentum buffers
that did not exist yet are put back as zeros: SGD's first step sets buf = grad, and 0.9 * 0 + grad
is the same number. The graph bakes in each parameter group's lr, so it is captured again whenever
the schedule changes it; what a graph cannot hold (an lr that changes every step, loss scaling, a
partial last batch, optimizers with host-side step counters) is refused by the spec
(`spec.cuda_graph_blockers`), data-parallel runs and teachers by `engine.train.setup`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

Body = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
WARMUP_STEPS = 3  # eager steps on a side stream before a first capture (PyTorch's CUDA graph notes use 3)


class GraphedStep:
    """`body(x, y, target)` (forward, loss, backward, optimizer update; no zero_grad) captured once per
    lr setting and replayed on copies of each batch. Returns the graph's own logits and loss tensors,
    which the next call overwrites."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, body: Body) -> None:
        self.model, self.opt, self.body = model, opt, body
        self.graph: Any = None  # a torch.cuda.CUDAGraph
        self.lrs: tuple[float, ...] | None = None
        self.captures = 0
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        lrs = tuple(float(g["lr"]) for g in self.opt.param_groups)
        if self.static is None:
            self.static = (x.clone(), y.clone(), None if target is None else target.clone())
            self._warm_up()
        if lrs != self.lrs:
            self._capture()
            self.lrs = lrs
        sx, sy, st = self.static
        sx.copy_(x)
        sy.copy_(y)
        if st is not None and target is not None:
            st.copy_(target)
        assert self.graph is not None and self.out is not None
        self.graph.replay()
        return self.out

    def _warm_up(self) -> None:
        """WARMUP_STEPS eager steps on a side stream, then every tensor they changed put back."""
        assert self.static is not None
        saved = self.snapshot()
        with self._side_stream():
            for _ in range(WARMUP_STEPS):
                self.opt.zero_grad(set_to_none=True)
                self.body(*self.static)
        self.put_back(saved)
        self.opt.zero_grad(set_to_none=True)

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
        """Copies of the model's state (weights, BatchNorm statistics and counters) and the optimizer's tensors."""
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        states = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in self.opt.state.items()}
        return weights, states

    @torch.no_grad()
    def put_back(self, saved: tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]) -> None:
        """Copy a `snapshot` back in place (a captured graph holds these tensors); optimizer tensors made
        since the snapshot become zeros."""
        weights, states = saved
        for k, v in self.model.state_dict().items():
            v.copy_(weights[k])
        for p, s in self.opt.state.items():
            before = states.get(id(p), {})
            for k, v in s.items():
                if torch.is_tensor(v):
                    v.copy_(before[k]) if k in before else v.zero_()

    def _capture(self) -> None:
        """Capture the body at the optimizer's current lr (the gradients it allocates live in the graph)."""
        assert self.static is not None
        static = self.static
        self.graph = self.out = None  # the previous graph's memory goes back before the new capture
        self.opt.zero_grad(set_to_none=True)
        self.graph, self.out = self._record(lambda: self.body(*static))
        self.captures += 1

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def _record(self, fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
        """(a graph with a .replay(), the outputs it writes): `fn` recorded, not run (the tests' seam)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (checkpoints) may run
            out = fn()
        return graph, out
