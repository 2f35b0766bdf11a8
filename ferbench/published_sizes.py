"""Published size claims and reference counts, checked against ferbench's own measurements.

Sources: REFERENCE.md §2-3 (ResFace's paper claims; timm's ConvNeXt figures; EmoNeXt counts derived
from its official code). "GMACs" is what papers and timm call "FLOPs".
"""

from __future__ import annotations

from typing import Any

# (model, options, classes, input, claimed params in M, claimed GMACs, source)
SIZE_CLAIMS: list[tuple[str, dict, int, int, float | None, float | None, str]] = [
    ("resface-r18", {}, 7, 224, 10.4, None, "ResFace paper (via overview article): ~10.4M params"),
    ("resface-r50", {}, 7, 224, 12.4, 2.0, "ResFace paper (via overview article): ~12.4M params, ~2,000 MFLOPs"),
    ("resnet18", {}, 1000, 224, 11.69, 1.82, "torchvision ResNet-18"),
    ("resnet50", {}, 1000, 224, 25.56, 4.09, "torchvision ResNet-50"),
    ("convnext-tiny", {}, 1000, 224, 28.59, 4.47, "timm convnext_tiny"),
    ("convnext-small", {}, 1000, 224, 50.22, 8.71, "timm convnext_small"),
    ("convnext-base", {}, 1000, 224, 88.59, 15.38, "timm convnext_base"),
    ("convnext-large", {}, 1000, 224, 197.77, 34.40, "timm convnext_large"),
    ("convnext-xlarge", {}, 1000, 224, 350.20, 60.98, "timm convnext_xlarge"),
    ("emonext-tiny", {}, 7, 224, 30.56, None, "EmoNeXt official code, 7 classes [derived]"),
    ("emonext-small", {}, 7, 224, 52.20, None, "EmoNeXt official code, 7 classes [derived]"),
    ("emonext-base", {}, 7, 224, 91.77, None, "EmoNeXt official code, 7 classes [derived]"),
    ("emonext-large", {}, 7, 224, 204.58, None, "EmoNeXt official code, 7 classes [derived]"),
    ("emonext-xlarge", {}, 7, 224, 362.31, None, "EmoNeXt official code, 7 classes [derived]"),
]


def size_claim(arch: str) -> dict[str, Any] | None:
    """The published size figures for an architecture, if any (read by reports; no torch needed)."""
    for name, _, k, size, p, g, source in SIZE_CLAIMS:
        if name == arch:
            return {"params_m": p, "gmacs": g, "input_size": size, "num_classes": k, "source": source}
    return None


def claims_table() -> list[dict[str, Any]]:
    from ferbench.cost import model_cost

    rows = []
    for name, opts, k, size, p_claim, g_claim, source in SIZE_CLAIMS:
        m = model_cost(name, size, k, timed=False, **opts)
        p = m["params"] / 1e6
        rows.append({
            "model": name, "input_size": size, "num_classes": k, "params_m": p, "claimed_params_m": p_claim,
            "params_off_pct": None if p_claim is None else 100 * (p - p_claim) / p_claim,
            "gmacs": m["gmacs"], "claimed_gmacs": g_claim,
            "gmacs_off_pct": None if g_claim is None else 100 * (m["gmacs"] - g_claim) / g_claim, "source": source,
        })
    return rows


def claims_markdown(rows: list[dict[str, Any]]) -> str:
    def f(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    lines = ["| model | input | classes | params (M) measured | claimed | off | GMACs measured | claimed | off | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = lambda off: "" if off is None or abs(off) < 2 else " **⚠**"  # noqa: E731
        lines.append(f"| {r['model']} | {r['input_size']} | {r['num_classes']} | {r['params_m']:.2f} | {f(r['claimed_params_m'], '.2f')} | "
                     f"{f(r['params_off_pct'], '+.1f')}%{flag(r['params_off_pct'])} | {r['gmacs']:.2f} | {f(r['claimed_gmacs'], '.2f')} | "
                     f"{f(r['gmacs_off_pct'], '+.1f')}%{flag(r['gmacs_off_pct'])} | {r['source']} |")
    return "\n".join(lines).replace("–%", "–")
