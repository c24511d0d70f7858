"""Regenerate ``digits.bin.gz``: the binarised 8x8 handwritten digits shipped with rdloss.

Source: the UCI "Optical Recognition of Handwritten Digits" data (optdigits; E. Alpaydin and
C. Kaynak, 1998; https://doi.org/10.24432/C50P49), licence CC BY 4.0, in the copy that
scikit-learn bundles as ``sklearn.datasets.load_digits`` (1,797 images of 8x8 pixels with
intensities 0..16). Each pixel is binarised as ``intensity >= 8`` (half the range).

File layout (gzip-compressed, read by `rdloss.demo.data.load_digits` with torch and
the standard library only):

* 16-byte header: ``b"RDLOSSDIGITS"`` then the image count as a little-endian uint32;
* ``N * 8`` bytes: each image's 64 pixels packed 8 per byte, row-major, most significant
  bit first (``numpy.packbits`` order);
* ``N`` bytes: the digit labels 0..9.

Regeneration needs scikit-learn and numpy (development only, never at run time)::

    python rdloss/demo/data/make_digits.py
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

__all__ = ["HEADER", "THRESHOLD", "main"]

HEADER = b"RDLOSSDIGITS"
THRESHOLD = 8


def main() -> None:
    """Write ``digits.bin.gz`` beside this script."""
    import numpy as np
    from sklearn.datasets import load_digits  # type: ignore[import-untyped,import-not-found,unused-ignore]

    digits = load_digits()
    pixels = (digits.data >= THRESHOLD).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    packed = np.packbits(pixels, axis=1)
    payload = HEADER + struct.pack("<I", len(pixels)) + packed.tobytes() + labels.tobytes()
    target = Path(__file__).with_name("digits.bin.gz")
    # mtime=0 keeps the file byte-identical across regenerations.
    with target.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(payload)
    print(f"wrote {target} ({target.stat().st_size} bytes, {len(pixels)} images)")


if __name__ == "__main__":
    main()
