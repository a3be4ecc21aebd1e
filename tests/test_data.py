"""The data files: checksums, loaders, and clear errors when a file is missing or corrupt."""

import shutil

import pytest
import torch

from normlib import data


def test_mnist_loads_with_expected_shapes_and_classes():
    x_train, y_train = data.load_mnist("train")
    x_test, y_test = data.load_mnist("test")
    assert x_train.shape == (8000, 1, 28, 28) and x_test.shape == (2000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert 0 <= x_train.min() and x_train.max() <= 1
    assert set(y_test.tolist()) == set(range(10))
    assert torch.bincount(y_train).min() > 600  # shuffled: every class in the training part
    # real digits: ink covers roughly 10-25% of the pixels on average
    assert 0.05 < (x_train > 0.5).float().mean() < 0.3


def test_shakespeare_and_tokenizer_round_trip():
    text = data.load_shakespeare()
    assert 900_000 < len(text) < 1_100_000 and text.startswith("HAMLET")
    tok = data.CharTokenizer(text)
    ids = tok.encode(text[:1000])
    assert ids.dtype == torch.long and tok.decode(ids) == text[:1000]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("\u00e9")


def test_missing_and_corrupt_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLIB_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match="data file mnist10k.npz not found"):
        data.load_mnist()
    shutil.copy(data.data_path.__globals__["Path"](__file__).parent.parent / "data" / "shakespeare.txt",
                tmp_path / "shakespeare.txt")
    assert data.load_shakespeare().startswith("HAMLET")
    with open(tmp_path / "shakespeare.txt", "a") as f:
        f.write("tampered")
    with pytest.raises(data.DataError, match="shakespeare.txt .* is corrupted"):
        data.load_shakespeare()


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split: expected one of"):
        data.load_mnist("validation")
