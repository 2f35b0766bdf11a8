"""Carry FER-2013 + FER+ to a lent GPU machine that cannot reach the data, losslessly and under 64 MiB.

`pack SRC DST`: FER-2013's pixels as PNG strips (zlib on 48-pixel rows: ~56 MiB instead of the CSV's
90 MiB gzipped), its labels and Usage column as .npy, FER+'s fer2013new.csv gzipped, and the sha256 of
the decompressed fer2013.csv. `unpack DST ROOT`: writes ROOT/fer2013/fer2013.csv byte for byte as the
original (the sha256 is checked; a mismatch exits 1) and ROOT/ferplus/fer2013new.csv.

Nothing here is committed: DST lives in an ignored folder (.gpudata/) that the device call carries.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

USAGES = ["Training", "PublicTest", "PrivateTest"]
HEADER = b"emotion,pixels,Usage\n"
CHUNK = 4096


def _read_rows(csv_gz: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    raw = gzip.decompress(csv_gz.read_bytes()) if csv_gz.suffix == ".gz" else csv_gz.read_bytes()
    lines = raw.split(b"\n")
    assert lines[0] + b"\n" == HEADER and lines[-1] == b"", "unexpected FER-2013 layout"
    rows = [ln.split(b",") for ln in lines[1:-1]]
    labels = np.array([int(r[0]) for r in rows], dtype=np.uint8)
    usage = np.array([USAGES.index(r[2].decode()) for r in rows], dtype=np.uint8)
    pixels = np.array([np.array(r[1].split(b" "), dtype=np.uint8) for r in rows]).reshape(-1, 48, 48)
    return pixels, labels, usage, hashlib.sha256(raw).hexdigest()


def _csv_bytes(pixels: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> bytes:
    names = [str(v).encode() for v in range(256)]
    out = [HEADER]
    for img, lab, use in zip(pixels.reshape(len(pixels), -1), labels, usage):
        out.append(b"%d,%s,%s\n" % (lab, b" ".join([names[v] for v in img]), USAGES[use].encode()))
    return b"".join(out)


def pack(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    pixels, labels, usage, digest = _read_rows(src / "fer2013" / "fer2013.csv.gz")
    for i, s in enumerate(range(0, len(pixels), CHUNK)):
        Image.fromarray(pixels[s:s + CHUNK].reshape(-1, 48)).save(dst / f"pixels{i:02d}.png", optimize=True)
    np.save(dst / "labels.npy", labels)
    np.save(dst / "usage.npy", usage)
    (dst / "fer2013.sha256").write_text(digest + "\n")
    (dst / "fer2013new.csv.gz").write_bytes(gzip.compress((src / "ferplus" / "fer2013new.csv").read_bytes(), 9, mtime=0))
    print(f"packed {len(pixels)} images into {sum(f.stat().st_size for f in dst.iterdir()) / 2**20:.1f} MiB")


def unpack(dst: Path, root: Path) -> None:
    parts = sorted(dst.glob("pixels*.png"))
    pixels = np.concatenate([np.asarray(Image.open(p).convert("L")).reshape(-1, 48, 48) for p in parts])
    blob = _csv_bytes(pixels, np.load(dst / "labels.npy"), np.load(dst / "usage.npy"))
    want = (dst / "fer2013.sha256").read_text().strip()
    if hashlib.sha256(blob).hexdigest() != want:
        sys.exit(f"unpack: rebuilt fer2013.csv does not match sha256 {want}")
    (root / "fer2013").mkdir(parents=True, exist_ok=True)
    (root / "ferplus").mkdir(parents=True, exist_ok=True)
    (root / "fer2013" / "fer2013.csv").write_bytes(blob)
    (root / "ferplus" / "fer2013new.csv").write_bytes(gzip.decompress((dst / "fer2013new.csv.gz").read_bytes()))
    print(f"unpacked {len(pixels)} images to {root}; fer2013.csv sha256 {want} (matches the original)")


if __name__ == "__main__":
    verb, a, b = sys.argv[1:4]
    (pack if verb == "pack" else unpack)(Path(a), Path(b))
