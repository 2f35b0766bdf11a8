"""`ferbench bench`: the harness's own cost, measured side by side with a reference in one process.

Rows (each: name, ours_per_s, reference_per_s, ratio, plus the conditions):
- data_{224,48}: training-batch production (flip, rotation 20, resize 236/224, random crop, grey to
  3 channels) by ferbench's batched tensor warp vs torchvision's PIL per-sample transforms in a
  DataLoader (2 workers).
- train_epoch: 2-epoch `fit`s of 2,944 images an epoch (augmentation, metrics, every end-of-epoch
  checkpoint included) vs a bare hand-written loop over the same in-memory data (no augmentation),
  same model/batch/optimizer/threads, the two alternating step by step.
- eval_tencrop: batched TenCrop TTA (`predict`) vs the same forwards done crop by crop, and vs one bare
  forward over the already expanded batch.
- fer2013_csv: first parse and cached load of the real CSV (needs --data-root or FERBENCH_DATA).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ferbench.data import FerDataset, Split
from ferbench.data.augment import augment_batch, finish, to_unit
from ferbench.bench.timing import faces, fit_seconds, rate, row
from ferbench.engine.checkpoint import CheckpointWriter
from ferbench.engine.evaluate import predict
from ferbench.engine.train import NoProgress
from ferbench.hostmem import keep_freed_memory
from ferbench.models import create_model
from ferbench.spec import EMONEXT_RESIZE_RATIO, AugmentConfig, TrainConfig

PAPER_AUG = AugmentConfig(hflip=True, rotation=20.0, resize_ratio=EMONEXT_RESIZE_RATIO)


class _PilFaces(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), 0


def bench_data(size: int, batch: int = 64, seconds: float = 3.0, windows: int = 5) -> dict[str, Any]:
    import torchvision.transforms as T

    images = faces(2048)
    resize = int(round(size * EMONEXT_RESIZE_RATIO))
    tf = T.Compose([T.RandomHorizontalFlip(), T.RandomRotation(20), T.Resize(resize), T.RandomCrop(size),
                    T.Grayscale(3), T.ToTensor()])
    loader = torch.utils.data.DataLoader(_PilFaces(images, tf), batch_size=batch, shuffle=True, num_workers=2,
                                         persistent_workers=True, drop_last=True)
    it = iter(loader)

    def reference() -> int:
        nonlocal it
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        return x.shape[0]

    src = torch.from_numpy(images)
    gen = torch.Generator().manual_seed(0)

    def ours() -> int:
        idx = torch.randint(0, len(src), (batch,), generator=gen)
        x = finish(augment_batch(to_unit(src.index_select(0, idx)), size, PAPER_AUG, gen, out_chans=3), 3, "none")
        return x.contiguous(memory_format=torch.channels_last).shape[0]  # materialised, as the model reads it

    # Interleaved windows, best of each: the machine's load drifts hit both alike. Each reference window
    # first drains the batches its workers prefetched (2 per worker) while ours ran.
    rounds = [(rate(reference, seconds, warmup=5), rate(ours, seconds, warmup=2)) for _ in range(windows)]
    ref, mine = (max(col) for col in zip(*rounds))
    del it, loader
    return row(f"data_{size}", mine, ref, batch=batch, input="48x48 uint8", output=f"3x{size}x{size} float (ours channels-last, as the model reads it; reference NCHW)",
                reference="torchvision PIL per-sample transforms, DataLoader(num_workers=2)", windows=windows,
                window_seconds=seconds, all_windows=[{"ours_per_s": o, "reference_per_s": r} for r, o in rounds])


def bare_steps(model_name: str, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig) -> Iterator[None]:
    """A bare hand-written training loop over in-memory data, one step per `next()`.

    Same model, optimizer, batch, input channels and memory format as the bench's `fit`; no
    augmentation, no metrics, no checkpoint. The model and optimizer are built before the first
    `next()`, so only steps are timed.
    """
    torch.manual_seed(0)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = create_model(model_name, 7, cfg.input_size, cfg.in_chans).to(memory_format=fmt)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW)(model.parameters(), lr=cfg.lr,
                                                                                 weight_decay=cfg.weight_decay)
    x_all = torch.from_numpy(images).unsqueeze(1).float().div(255).sub(0.5).div(0.5)
    y_all = torch.from_numpy(labels)
    n, batch = len(labels), cfg.batch_size
    model.train()

    def loop() -> Iterator[None]:
        while True:
            order = torch.randperm(n)
            for i in range(n // batch):
                idx = order[i * batch:(i + 1) * batch]
                x = x_all[idx].expand(-1, cfg.in_chans, -1, -1).contiguous(memory_format=fmt)
                loss = F.cross_entropy(model(x), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                yield

    return loop()


class Interleaved(NoProgress):
    """A `fit` progress sink that runs one bare step after each of fit's steps and times both apart.

    So the two loops alternate second by second and the VM's load swings (10-15 % between 40-second
    windows here) hit both alike. Before each bare step it waits for fit's checkpoint write in
    flight, if any, and that wait counts as fit's: the write never borrows the bare step's time.
    """

    def __init__(self, bare: Iterator[None], writer: CheckpointWriter) -> None:
        self.bare, self.writer = bare, writer
        self.fit_steps: list[float] = []  # from the epoch's start, then step to step, bare steps excluded
        self.bare_steps: list[float] = []
        self._last = 0.0

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self._last = time.perf_counter()

    def advance(self) -> None:
        self.writer.close()
        t = time.perf_counter()
        self.fit_steps.append(t - self._last)
        next(self.bare)
        self._last = time.perf_counter()
        self.bare_steps.append(self._last - t)


TRAIN_BENCH_CFG = TrainConfig(epochs=2, batch_size=128, input_size=48, optimizer="sgd", lr=0.01, schedule="constant",
                              augment=AugmentConfig(hflip=True, rotation=10.0))


def bench_train(model_name: str = "resnet18", cfg: TrainConfig = TRAIN_BENCH_CFG, n: int = 2944,
                repeats: int = 3, name: str = "train_epoch") -> dict[str, Any]:
    """`fit` against a bare loop, step by step interleaved, over `repeats` fits of `cfg.epochs` epochs after a warm-up.

    Epochs of the cpu profiles' size (3,000 training images; 23 batches of 128 here) and more than
    one per fit, as in a real run: each epoch's checkpoint is written while the next one trains, and
    the wait for the last one is paid once (in `ferbench run` it overlaps with the test evaluation;
    here it is inside fit's time). Fit's time is its whole wall time (start-up, augmentation, metrics,
    epoch ends, checkpoints) less the bare steps run inside it; the bare loop's is the sum of its steps.
    """
    size, batch, epochs = cfg.input_size, cfg.batch_size, cfg.epochs
    images, labels = faces(n, size=size), np.random.default_rng(1).integers(0, 7, n)
    ds = FerDataset("bench", [str(i) for i in range(7)], {"train": Split(images, labels)})
    tmp = Path(tempfile.mkdtemp(prefix="ferbench-bench-"))

    def interleaved(e: int) -> tuple[float, Interleaved]:
        """(fit's seconds, the sink with both loops' step times) of one e-epoch fit."""
        writer = CheckpointWriter()
        sink = Interleaved(bare_steps(model_name, images, labels, cfg), writer)
        wall = fit_seconds(model_name, ds, cfg.model_copy(update={"epochs": e}), torch.device("cpu"), tmp,
                           progress=sink, writer=writer)
        return wall - sum(sink.bare_steps), sink

    interleaved(1)  # warm-up
    runs = [interleaved(epochs) for _ in range(repeats)]
    shutil.rmtree(tmp, ignore_errors=True)
    seen = epochs * (n // batch) * batch
    fit_steps = [t for _, sink in runs for t in sink.fit_steps]
    ref_steps = [t for _, sink in runs for t in sink.bare_steps]
    our_t, ref_t = sum(o for o, _ in runs), sum(ref_steps)
    return row(name, repeats * seen / our_t, repeats * seen / ref_t, model=model_name, input_size=size,
                batch=batch, images_per_epoch=(n // batch) * batch, epochs=epochs, repeats=repeats,
                in_chans=cfg.in_chans, optimizer=cfg.optimizer, channels_last=cfg.channels_last,
                augment="none" if cfg.augment.is_identity else "recipe's",
                reference="bare PyTorch loop, same model/optimizer/batch, no augmentation, no checkpoint",
                method="one bare step after each fit step; totals over all repeats",
                all_repeats=[{"ours_per_s": seen / o, "reference_per_s": seen / sum(sink.bare_steps)} for o, sink in runs],
                step_ms_median={"ours": 1e3 * float(np.median(fit_steps)), "reference": 1e3 * float(np.median(ref_steps))},
                # fit's time outside its steps: start-up, epoch ends, the wait for the last checkpoint
                ours_outside_steps_s=[o - sum(sink.fit_steps) for o, sink in runs])


def bench_eval(model_name: str = "resnet18", size: int = 48, n: int = 256, batch: int = 64,
               windows: int = 5, seconds: float = 1.5) -> list[dict[str, Any]]:
    images = faces(n)
    model = create_model(model_name, 7, size).eval().to(memory_format=torch.channels_last)
    cfg = TrainConfig(input_size=size, eval_batch_size=batch)
    device = torch.device("cpu")
    from ferbench.engine.evaluate import views

    def ours() -> int:
        predict(model, images, cfg, device, "tencrop", EMONEXT_RESIZE_RATIO)
        return n

    src = torch.from_numpy(images)

    @torch.no_grad()
    def cropwise() -> int:
        for s in range(0, n, batch):
            v = views(to_unit(src[s:s + batch]), size, "tencrop", EMONEXT_RESIZE_RATIO)
            logits = [model(finish(c, 3, "half").contiguous(memory_format=torch.channels_last)) for c in v]
            torch.stack(logits).mean(0)
        return n

    expanded = [finish(views(to_unit(src[s:s + batch]), size, "tencrop", EMONEXT_RESIZE_RATIO).flatten(0, 1), 3, "half")
                .contiguous(memory_format=torch.channels_last) for s in range(0, n, batch)]

    @torch.no_grad()
    def bare() -> int:
        for x in expanded:
            model(x)
        return n

    # Interleaved windows, best of each: load drifts hit all three alike. A window is one pass over the
    # n images (~3.5 s here), so each side is warmed up once rather than before every window.
    for fn in (ours, cropwise, bare):
        fn()
    rounds = [(rate(ours, seconds, 0), rate(cropwise, seconds, 0), rate(bare, seconds, 0)) for _ in range(windows)]
    mine, crop, raw = (max(col) for col in zip(*rounds))
    common = {"model": model_name, "input_size": size, "batch": batch, "views": 10, "windows": windows}
    return [row("eval_tencrop_vs_cropwise", mine, crop, reference="10 separate forwards per batch", **common,
                 all_windows=[{"ours_per_s": o, "reference_per_s": c} for o, c, _ in rounds]),
            row("eval_tencrop_vs_bare", mine, raw, reference="one bare forward over the pre-expanded batch", **common,
                 all_windows=[{"ours_per_s": o, "reference_per_s": b} for o, _, b in rounds])]


def bench_csv(data_root: str | None) -> list[dict[str, Any]]:
    import os

    from ferbench.data.fer2013 import find_csv, parse_csv
    from ferbench.data import load_dataset

    root = data_root or os.environ.get("FERBENCH_DATA")
    if not root:
        return [{"name": "fer2013_csv", "skipped": "no --data-root or FERBENCH_DATA"}]
    path = find_csv(Path(root), None)
    t0 = time.perf_counter()
    rows = len(parse_csv(path)["labels"])
    parse_s = time.perf_counter() - t0
    old = os.environ.get("FERBENCH_CACHE")
    os.environ["FERBENCH_CACHE"] = tempfile.mkdtemp(prefix="ferbench-cache-")
    try:
        load_dataset("fer2013", data_root=root)  # fills the fresh cache
        t0 = time.perf_counter()
        load_dataset("fer2013", data_root=root)
        cached_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(os.environ["FERBENCH_CACHE"], ignore_errors=True)
        if old is None:
            os.environ.pop("FERBENCH_CACHE")
        else:
            os.environ["FERBENCH_CACHE"] = old
    return [row("fer2013_csv_first_parse", rows / parse_s, None, seconds=parse_s, target_seconds=10.0, rows=rows),
            row("fer2013_cached_load", rows / cached_s, None, seconds=cached_s, target_seconds=0.5, rows=rows)]


def run_bench(which: str, data_root: str | None = None) -> list[dict[str, Any]]:
    allocator = keep_freed_memory()  # as `ferbench run` does; both sides of every row share the process
    rows: list[dict[str, Any]] = []
    if which in ("data", "all"):
        rows += [bench_data(224, batch=32), bench_data(48, batch=128)]
    if which in ("train", "all"):
        rows.append(bench_train())
    if which in ("eval", "all"):
        rows += bench_eval()
    if which in ("csv", "all"):
        rows += bench_csv(data_root)
    for r in rows:
        r["host_allocator"] = allocator
    return rows
