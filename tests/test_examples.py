"""The example specs: the PBT paper's toy, the digits demo and the MNIST benchmark."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import unavailable
from popbt.examples import digits, mnist
from popbt.examples import toy_quadratic as toy

CPU = "cpu"


# -- toy quadratic -------------------------------------------------------------------


def test_toy_interval_with_full_h_increases_q():
    theta = toy.build({"h0": 1.0, "h1": 1.0}, CPU)
    before = toy.evaluate(theta, CPU)
    toy.train(theta, {"h0": 1.0, "h1": 1.0}, 0, CPU)
    assert toy.evaluate(theta, CPU) > before


def test_toy_interval_with_zero_h_changes_nothing():
    theta = toy.build({"h0": 0.0, "h1": 0.0}, CPU)
    before = toy.evaluate(theta, CPU)
    toy.train(theta, {"h0": 0.0, "h1": 0.0}, 0, CPU)
    assert np.array_equal(theta, toy.THETA0)
    assert toy.evaluate(theta, CPU) == before


def test_toy_save_load_roundtrip(tmp_path):
    theta = toy.build({"h0": 0.3, "h1": 0.7}, CPU)
    toy.train(theta, {"h0": 0.3, "h1": 0.7}, 0, CPU)
    path = tmp_path / "ckpt"
    toy.save(theta, str(path))
    assert path.exists()  # no ".npy" appended
    loaded = toy.load(toy.build({"h0": 0.3, "h1": 0.7}, CPU), str(path))
    assert np.array_equal(loaded, theta)


def test_toy_does_not_import_torch():
    code = "import sys, popbt.examples.toy_quadratic; assert 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- digits --------------------------------------------------------------------------

DIGITS_HPARAMS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


def test_digits_one_interval_gives_an_accuracy():
    torch.manual_seed(0)
    state = digits.build(DIGITS_HPARAMS, CPU)
    extra = digits.train(state, DIGITS_HPARAMS, 0, CPU)
    assert np.isfinite(extra["train_loss"])
    assert 0.0 <= digits.evaluate(state, CPU) <= 1.0


def test_digits_learns_in_three_intervals():
    torch.manual_seed(0)
    state = digits.build(DIGITS_HPARAMS, CPU)
    for interval in range(3):
        digits.train(state, DIGITS_HPARAMS, interval, CPU)
    assert digits.evaluate(state, CPU) > 0.8


# -- mnist ---------------------------------------------------------------------------


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array in idx format: 0, 0, 0x08, ndim, big-endian dims, bytes."""
    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    labels = np.array([7, 0, 9])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)

    assert np.array_equal(mnist.read_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz")), images)
    x, y = mnist.read_images(str(tmp_path), "t10k")
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == [7, 0, 9]
    assert x[0, 0, 0, 0].item() == pytest.approx((0 - mnist.MEAN) / mnist.STD)


def test_mnist_missing_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("POPBT_DATA", str(tmp_path))
    state = mnist.build({"lr": 0.01, "momentum": 0.5}, CPU)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as error:
        mnist.train(state, {"lr": 0.01, "momentum": 0.5}, 0, CPU)
    assert str(tmp_path) in str(error.value) and "--data DIR" in str(error.value)


def test_mnist_split_is_fixed_and_disjoint():
    held, kept = mnist.split(100)
    assert len(held) == 20 and len(kept) == 80
    assert sorted(torch.cat([held, kept]).tolist()) == list(range(100))
    assert torch.equal(mnist.split(100)[0], held)


def test_mnist_short_interval_on_real_data(monkeypatch):
    if not os.path.isdir(mnist.DATA_DIR):
        unavailable(f"{mnist.DATA_DIR} is absent (Debian's dataset-fashion-mnist package)")
    monkeypatch.delenv("POPBT_DATA", raising=False)
    monkeypatch.setattr(mnist, "train_limit", 640)
    torch.manual_seed(0)
    hparams = {"lr": 0.01, "momentum": 0.5}
    state = mnist.build(hparams, CPU)
    mnist.train(state, hparams, 1, CPU)
    score = mnist.evaluate(state, CPU)
    assert isinstance(score, float) and 0.0 <= score <= 1.0
