"""`ferbench bench`: the harness's own cost, measured beside a reference in the same process.

- `cpu`: the CPU rows (training batches against torchvision's PIL pipeline, `fit` against a bare
  loop, batched TenCrop, the FER-2013 CSV parse and cache).
- `gpu`: training throughput of the paper models on an accelerator, `fit` against a bare loop, and
  the share of the measured bf16 peak.
- `torchprof`: one epoch of each loop under `torch.profiler`: host syncs, launches, device busy.
- `timing`: what the rows share (device-synchronised clocks, rates, the row format, a timed `fit`).
"""
