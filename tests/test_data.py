"""The data files: checksums, loaders, and clear errors when a file is missing or corrupt."""

import math
import shutil

import pytest
import torch

from normlib.book import data


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
    checkout_data = data.data_dir()
    monkeypatch.setenv("NORMBOOK_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match="data file mnist10k.npz not found .* set NORMBOOK_DATA"):
        data.load_mnist()
    shutil.copy(checkout_data / "shakespeare.txt", tmp_path / "shakespeare.txt")
    assert data.load_shakespeare().startswith("HAMLET")
    with open(tmp_path / "shakespeare.txt", "a") as f:
        f.write("tampered")
    with pytest.raises(data.DataError, match="shakespeare.txt .* is corrupted"):
        data.load_shakespeare()


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split: expected one of"):
        data.load_mnist("validation")


@pytest.mark.parametrize("name", sorted(data.PHOTOS))
def test_every_photo_loads_offline_as_rgb_in_unit_range(name):
    image = data.load_photo(name, short_side=32)
    assert image.dtype == torch.float32 and image.shape[0] == 3 and min(image.shape[1:]) == 32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01


def test_center_crop_takes_the_middle_and_checks_the_size():
    image = torch.arange(3 * 5 * 7, dtype=torch.float32).reshape(3, 5, 7)
    crop = data.center_crop(image, 3)
    assert torch.equal(crop, image[:, 1:4, 2:5])
    with pytest.raises(ValueError, match="image"):
        data.center_crop(image, 6)


def test_random_crops_are_reproducible_and_come_from_the_images():
    images = [torch.arange(3 * 10 * 12, dtype=torch.float32).view(3, 10, 12), torch.zeros(3, 8, 8)]
    first = data.random_crops(images, 6, 8, torch.Generator().manual_seed(0))
    again = data.random_crops(images, 6, 8, torch.Generator().manual_seed(0))
    assert first.shape == (6, 3, 8, 8) and torch.equal(first, again)
    source = images[0]
    windows = [source[:, i:i + 8, j:j + 8] for i in range(3) for j in range(5)]
    for crop in first:
        assert (crop == 0).all() or any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)
    with pytest.raises(ValueError, match=r"images\[1\]: expected a \(C, H, W\) tensor with H, W >= size = 9"):
        data.random_crops(images, 1, 9, torch.Generator())
    with pytest.raises(ValueError, match="name: expected one of"):
        data.load_photo("mona_lisa")


def test_data_folder_is_found_from_a_checkout_an_argument_or_not_at_all(tmp_path, monkeypatch):
    """An installed wheel has no data/ beside it: the folder is found from the current directory
    inside a checkout, given as an argument, or reported with what to do."""
    checkout_data = data.data_dir()
    assert (checkout_data / "README.md").is_file()
    assert data.data_path("shakespeare.txt", root=checkout_data).parent == checkout_data
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "normlib" / "book" / "data.py"))
    monkeypatch.chdir(checkout_data.parent / "chapters")
    assert data.data_dir() == checkout_data
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError, match="data/ folder was not found: .* NORMBOOK_DATA"):
        data.data_dir()


def test_unigram_loss_is_the_cross_entropy_of_the_smoothed_frequencies():
    from normlib.book.data import unigram_loss

    # every token equally often: add-one smoothing changes nothing, the loss is log(V)
    train = torch.arange(5).repeat(4)
    assert unigram_loss(train, torch.tensor([0, 3, 4]), 5) == pytest.approx(math.log(5))
    # token 2 never seen: probability 1/(n + V), not 0
    train = torch.tensor([0, 0, 1])
    assert unigram_loss(train, torch.tensor([2]), 3) == pytest.approx(math.log(6))
    with pytest.raises(ValueError, match="vocab_size: expected more than the largest token id"):
        unigram_loss(torch.tensor([0, 7]), torch.tensor([0]), 3)
