"""ferbench: a reproducibility benchmark harness for facial-emotion-recognition papers.

Architecture: one direction, spec -> jobs -> run records -> reports; each step has one owner.

    spec.yaml --spec.load_spec--> Spec --spec.expand--> [Job]           (validated; a job id hashes its content)
    [Job] --runner.prepare--> datasets loaded once, every job checked   (nothing written before this passes)
    [Job] --launch.run_local / run_workers / run_submitit--> runner.run_job
    run_job: claim -> build (models/) -> train (engine/train; or reuse a finished training) -> evaluate -> record
             = runs/<spec>/<job-id>/ {job.yaml, manifest.json, history.csv, metrics.json, predictions.npz, checkpoint.pt}
    runs/ --records.discover--> [RunRecord] --report/--> reports/<spec>/index.html, report.md
                                            --report.compare--> paired statistics of two families

| module | owns |
| --- | --- |
| `api` | the Python API the CLI calls: `plan_spec`, `run_spec` (`train=False`: `ferbench eval`), `report_spec`, `compare`, `predict`, `export`, `list_models`, `data_info` |
| `cli` | Typer commands: parse -> api -> print, exit codes |
| `spec` | spec schema, profiles, `--set` overrides, recipes, expansion into `Job`s, job ids and condition hashes |
| `data/` | one module per dataset, the prepared-array cache, batched augmentation (arrays in, never files out) |
| `models/` | the registry and one module per family (its variants, options and checkpoint filter) |
| `engine/` | `train` (the loop), `losses`, `checkpoint` (state, background writer, resume), `evaluate` (TTA), `optim`, `dist`, `weights`, `graphs` (a step replayed as one CUDA graph), `sinks` (opt-in TensorBoard logging) |
| `hub` | what a `weights:` value names: a local file, or `timm:` / `hf-hub:` weights through the Hugging Face cache |
| `trained` | a finished run's model read back from its folder (`predict` and `export` use it) |
| `predict` | class probabilities for image files and folders, CSV/JSON out |
| `export` | ONNX / TorchScript / torch.export files with a parity check against PyTorch |
| `runner` | `run_job` and its phases, `prepare`, the manifest |
| `launch` | where jobs run (in-process, worker processes, submitit) and the one dependency rule they share |
| `records` | the run-record format: its file names, `job.yaml` validated into `Job`, `RunRecord`, locks, status, discovery |
| `recordcheck` | what a record's files must hold before report reads them (and where the file names are defined) |
| `metrics` | every statistic computed from saved predictions (the one bootstrap lives here) |
| `cost` | params, GMACs, latency of a model |
| `estimate` | a job's time on a device from a short probe (`ferbench plan`) |
| `memory` | a job's activation memory, counted on the meta device, refused before it is allocated |
| `machine` | the device choice and the environment recorded in each manifest |
| `report/` | tables, figures, rendering, compare; reads records only, never imports `engine` |
| `bench/` | the harness's own cost against reference pipelines (`ferbench bench`) |
| `published_sizes` | the papers' published model sizes (params, GMACs) that `models --claims` sets beside measured ones |
| `cpuinfo` | the CPU's model name (a leaf: the data layer keys its kernel choices by it) |
| `hostmem` | the host allocator policy every process applies first |
| `fileio` | atomic writes and file hashes, the leaf every writer imports |
"""

__version__ = "0.1.0"
RUNS_DIR = "runs"  # where `run` writes and `report`, `compare`, `predict`, `export` look unless told otherwise
