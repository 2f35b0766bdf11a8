"""Model registry: `create_model(name, num_classes, input_size, in_chans=3, **options)`.

Each family lives in its own module (baselines, emonext, resface, minixception, deepemotion) and registers its variants as
configs. Models never read files; pretrained weights are loaded by `engine.weights.load_pretrained`
from a path the user names, through the family's `checkpoint_filter` (as timm's `checkpoint_filter_fn`
lives in its model file) when the family's key names or shapes differ from the checkpoint's. A model may expose `aux_loss` (a tensor set by its last training forward, e.g. EmoNeXt's
self-attention regulariser) which the engine adds to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ferbench.errors import FerbenchError

if TYPE_CHECKING:
    from ferbench.spec import Job


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    build: Callable[..., Any]  # (num_classes, input_size, in_chans, **options) -> nn.Module
    config: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()  # option names the builder accepts
    description: str = ""
    paper: bool = False  # a variant the papers evaluate (False: a ferbench extension)
    checkpoint_filter: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None  # (state_dict, model) -> state_dict
    signature: Any = None  # the class whose __init__ annotations type the options (checked before any build)
    # the boolean options that switch on what the family adds to its base, and that base's family: with
    # every one off the model is the base (EmoNeXt without STN, SE and the attention loss is a ConvNeXt)
    modules: tuple[str, ...] = ()
    base_family: str | None = None


_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> None:
    if variant.name in _REGISTRY:
        raise ValueError(f"model {variant.name!r} registered twice")
    _REGISTRY[variant.name] = variant


_PLUGINS_LOADED = False


def _ensure_loaded() -> None:
    """Import every family module (each registers its variants on import; importing twice is a no-op),
    then, once, every installed package's `ferbench.models` entry point (a module that registers its
    variants on import, or a function that does when called)."""
    global _PLUGINS_LOADED
    from ferbench.models import baselines, deepemotion, emonext, minixception, resface  # noqa: F401

    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="ferbench.models"):
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded()
        except Exception as e:  # noqa: BLE001  (a broken plug-in is named in one line, never a traceback)
            raise FerbenchError(f"entry point ferbench.models {ep.name!r} ({ep.value}) failed to load: {e}") from None


def is_registered(name: str) -> bool:
    """Whether `name` is a variant this process already knows (built in, an installed plug-in's, or a
    user's module imported earlier), without importing anything new."""
    _ensure_loaded()
    return name in _REGISTRY


def variants() -> dict[str, Variant]:
    _ensure_loaded()
    return dict(_REGISTRY)


def get_variant(name: str) -> Variant:
    _ensure_loaded()
    if name not in _REGISTRY and name.startswith("timm:"):
        from ferbench.models.baselines import timm_variant

        register(timm_variant(name))
    elif name not in _REGISTRY and ":" in name:
        register(external_variant(name))
    if name not in _REGISTRY:
        raise FerbenchError(f"unknown model {name!r} (see `ferbench models`; e.g. {', '.join(sorted(_REGISTRY)[:6])}, ...; "
                            "or your own as 'package.module:function')")
    return _REGISTRY[name]


def family_of(name: str, options: dict[str, Any] | None = None) -> str:
    """The family a model belongs to as configured: its variant's family, or the base family when
    `options` switch off every module the family adds (`Variant.modules`). A name the registry does
    not hold (a record from a plug-in not installed here) falls back to its leading letters."""
    import re

    _ensure_loaded()
    v = _REGISTRY.get(name)
    if v is None:
        m = re.match(r"[a-z]+", name)
        return m.group(0) if m else name
    options = options or {}
    if v.modules and v.base_family and all(options.get(k) is False for k in v.modules):
        return v.base_family
    return v.family


REQUIRED_PARAMETERS = ("num_classes", "input_size", "in_chans")


_SPEC_FOLDERS: list[Path] = []  # folders of the specs read in this process (api.load adds each)


def add_spec_folder(folder: Path) -> None:
    """Look for a spec's own model modules in its folder too (after installed packages and the current folder)."""
    folder = folder.resolve()
    if folder not in _SPEC_FOLDERS:
        _SPEC_FOLDERS.append(folder)


def user_module_folders() -> list[Path]:
    """Where a `module:function` not installed is looked for, in order: the current folder, then each spec's folder."""
    return list(dict.fromkeys([Path.cwd().resolve(), *_SPEC_FOLDERS]))


def import_user_module(module_name: str) -> Any:
    """A researcher's module: as Python finds it (installed packages, PYTHONPATH), else from the current
    folder or a spec's folder, appended to sys.path after everything installed (so a local file never
    shadows an installed package of the same name; `python -m ferbench` puts the current folder first,
    as Python does)."""
    import importlib
    import sys

    top = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != top:  # the module was found but an import inside it failed: say that, do not search on
            raise FerbenchError(f"module {module_name!r} imports {e.name!r}, which is not installed") from None
    folders = [f for f in user_module_folders() if (f / top).is_dir() or (f / f"{top}.py").is_file()]
    if not folders:
        searched = ", ".join(str(f) for f in user_module_folders())
        raise FerbenchError(f"cannot import module {module_name!r}: not installed and not in {searched} (put {top}.py or "
                            f"the package {top}/ there, install it, add its folder to PYTHONPATH, or register a "
                            "ferbench.models entry point)")
    if str(folders[0]) not in sys.path:
        sys.path.append(str(folders[0]))
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def external_variant(name: str) -> Variant:
    """A researcher's own model named `package.module:function`: a callable with the registry's
    signature (num_classes, input_size, in_chans, **options); its other keyword parameters are its
    options, typed by their annotations like a built-in family's."""
    import inspect

    module_name, _, attr = name.partition(":")
    try:
        module = import_user_module(module_name)
    except FerbenchError as e:
        raise FerbenchError(f"model {name!r}: {e}") from None
    except ImportError as e:
        raise FerbenchError(f"model {name!r}: cannot import module {module_name!r} ({e})") from None
    build = getattr(module, attr, None)
    if not callable(build):
        raise FerbenchError(f"model {name!r}: module {module_name!r} has no callable {attr!r}")
    params = inspect.signature(build).parameters
    missing = [p for p in REQUIRED_PARAMETERS if p not in params]
    if missing:
        raise FerbenchError(f"model {name!r}: {attr}() must take {', '.join(REQUIRED_PARAMETERS)} (and options as keywords); "
                            f"it lacks {', '.join(missing)}")
    options = tuple(p for p in params if p not in REQUIRED_PARAMETERS
                    and params[p].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    return Variant(name, "external", build, options=options, signature=build,
                   description=(inspect.getdoc(build) or f"{module_name}.{attr}").splitlines()[0])


def check_options(name: str, options: dict[str, Any], where: str = "") -> None:
    """Validate a model name, its option keys and their values (types and ranges from the family's
    constructor annotations, e.g. `stn: bool`, `drop_path_rate: Annotated[float, Field(ge=0, lt=1)]`)
    without building it."""
    v = get_variant(name)
    unknown = sorted(set(options) - set(v.options))
    if unknown:
        allowed = ", ".join(v.options) or "none"
        raise FerbenchError(f"{where}model {name!r}: unknown option {unknown[0]!r} (accepted: {allowed})")
    if v.signature is None or not options:
        return
    from typing import get_type_hints

    from pydantic import TypeAdapter, ValidationError

    hints = get_type_hints(v.signature.__init__ if isinstance(v.signature, type) else v.signature, include_extras=True)
    for key, value in options.items():
        if key not in hints:  # an unannotated option of a researcher's own builder: passed as given
            continue
        try:
            TypeAdapter(hints[key]).validate_python(value, strict=isinstance(value, str) and hints[key] is bool)
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise FerbenchError(f"{where}model {name!r}: option {key}={value!r}: {msg}") from None


def create_model(name: str, num_classes: int, input_size: int = 224, in_chans: int = 3, **options: Any):
    v = get_variant(name)
    check_options(name, options)
    try:
        return v.build(num_classes=num_classes, input_size=input_size, in_chans=in_chans, **v.config, **options)
    except (TypeError, ValueError) as e:
        raise FerbenchError(f"model {name!r}: {e}") from None


def build_model(job: "Job", num_classes: int):
    """The network a job trains: its model entry's architecture and options at its input size and channels."""
    return create_model(job.model.arch, num_classes, job.train.input_size, job.train.in_chans, **job.model.options)


def check_logits(model: Any, num_classes: int, input_size: int, in_chans: int) -> None:
    """Refuse, in one line, a model that cannot serve a job: it must take (N, in_chans, size, size) and
    return one logits tensor (N, num_classes). Two all-zero images in eval mode without gradients, so
    neither the model's state nor any random stream changes (a run stays the run it was without the
    check). Raises JobFailed: the job fails with the reason, the rest of the spec runs."""
    import torch

    from ferbench.errors import JobFailed

    x = torch.zeros(2, in_chans, input_size, input_size, device=next(model.parameters(), torch.zeros(0)).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # a user's model may raise anything: one line, never a traceback
        raise JobFailed(f"the model cannot take {in_chans}x{input_size}x{input_size} input: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise JobFailed(f"the model returns a {type(out).__name__}, not a tensor of logits (N, {num_classes}): return "
                        "only the logits from forward() (wrap the model if it also returns features)")
    if tuple(out.shape) != (2, num_classes):
        raise JobFailed(f"the model returns shape {tuple(out.shape)} for 2 images; the dataset has {num_classes} classes, "
                        f"so logits must be (2, {num_classes}) (is its head sized from num_classes?)")
