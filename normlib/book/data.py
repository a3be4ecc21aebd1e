"""Loaders for the small datasets in the repository's ``data/`` folder.

Each file's SHA-256 is checked before it is read, so a truncated or altered file fails with
an error naming it instead of silently training on bad data. The folder is, in this order: the
``root`` argument of :func:`data_path`, the ``NORMBOOK_DATA`` environment variable, or the
``data/`` folder of the normbook checkout that holds this file or the current directory (so the
chapters find it whether normlib is installed from the checkout, editable, or as a wheel and run
from inside a checkout). ``data/README.md`` gives each file's provenance and license and
``data/make_data.py`` regenerates them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["data_dir", "data_path", "load_mnist", "load_shakespeare", "CharTokenizer", "language_model_windows",
           "shakespeare_language_model", "unigram_loss", "DataError", "PHOTOS", "load_photo", "random_crops",
           "multitask_regression"]

SHA256 = {
    "mnist10k.npz": "f1a23f2fb1a1c97bb00a811807ddd50a888dbcdcdead94147993273c22ee3f37",
    "shakespeare.txt": "c910e844c94621830c2222f2cca5c7ec512c59af2fa8dc53fff89cd4ed980b8b",
}
MNIST_TRAIN = 8000  # the first 8,000 (shuffled) digits train, the last 2,000 test


class DataError(RuntimeError):
    """A data file is missing or does not match its recorded checksum."""


def _checkout_data(start: Path) -> Path | None:
    """The ``data/`` folder of the normbook checkout at or above ``start``, if there is one."""
    for folder in (start, *start.parents):
        if (folder / "data" / "make_data.py").is_file():
            return folder / "data"
    return None


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder the data files are read from (see the module docstring for the search order)."""
    if root is not None:
        return Path(root)
    if "NORMBOOK_DATA" in os.environ:
        return Path(os.environ["NORMBOOK_DATA"])
    found = _checkout_data(Path(__file__).resolve().parent) or _checkout_data(Path.cwd().resolve())
    if found is None:
        raise DataError("the book's data/ folder was not found: run from a normbook checkout, or set NORMBOOK_DATA "
                        "to a folder holding the files of the repository's data/ (or make them there with "
                        "`python data/make_data.py`)")
    return found


def data_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Path of a data file after checking that it exists and its SHA-256 matches."""
    if name not in SHA256:
        raise ValueError(f"name: expected one of {sorted(SHA256)}, got {name!r}")
    path = data_dir(root) / name
    if not path.is_file():
        raise DataError(
            f"data file {name} not found at {path}: set NORMBOOK_DATA (or pass root) to the folder holding it, "
            f"or make it with `python data/make_data.py` in a normbook checkout"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[name]:
        raise DataError(
            f"data file {name} at {path} is corrupted: SHA-256 {digest}, expected {SHA256[name]}; "
            f"regenerate it with `python data/make_data.py`"
        )
    return path


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits as ``(images, labels)``: float32 images of shape ``(n, 1, 28, 28)`` in
    [0, 1] and int64 labels. ``split`` is ``"train"`` (8,000), ``"test"`` (2,000) or
    ``"all"`` (10,000)."""
    splits = {"train": slice(0, MNIST_TRAIN), "test": slice(MNIST_TRAIN, None), "all": slice(None)}
    if split not in splits:
        raise ValueError(f"split: expected one of {sorted(splits)}, got {split!r}")
    with np.load(data_path("mnist10k.npz")) as archive:
        images, labels = archive["images"][splits[split]], archive["labels"][splits[split]]
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_shakespeare() -> str:
    """About 1 MB of Shakespeare's plays as one string (CC BY 2.5, see data/README.md)."""
    return data_path("shakespeare.txt").read_text(encoding="utf-8")


class CharTokenizer:
    """Character-level vocabulary built from a text: ``encode`` maps a string to a
    LongTensor of ids, ``decode`` maps ids back."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = set(text) - self._index.keys()
        if unknown:
            raise ValueError(f"text: characters {sorted(unknown)!r} are not in the vocabulary")
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def language_model_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a 1-D sequence of token ids into non-overlapping windows for next-token
    prediction: inputs ``(n, context)`` and targets shifted by one position."""
    if ids.dim() != 1:
        raise ValueError(f"ids: expected a 1-D tensor, got shape {tuple(ids.shape)}")
    if not isinstance(context, int) or not 0 < context < len(ids):
        raise ValueError(f"context: expected an int in [1, {len(ids) - 1}], got {context!r}")
    n = (len(ids) - 1) // context
    inputs = ids[: n * context].view(n, context)
    targets = ids[1 : n * context + 1].view(n, context)
    return inputs, targets


def shakespeare_language_model(context: int, val_windows: int = 128, train_fraction: float = 0.9):
    """The character-level language-modelling task of the book's chapters: returns
    ``(tokenizer, (train_inputs, train_targets), (val_inputs, val_targets))``, the first
    ``train_fraction`` of the text for training and ``val_windows`` windows of the rest for
    validation."""
    text = load_shakespeare()
    tokenizer = CharTokenizer(text)
    ids = tokenizer.encode(text)
    split = int(train_fraction * len(ids))
    val_inputs, val_targets = language_model_windows(ids[split:], context)
    return tokenizer, language_model_windows(ids[:split], context), (val_inputs[:val_windows], val_targets[:val_windows])


# Photos for the style chapters, loaded offline from packages (none stored in data/): the
# scikit-image ones are public domain or CC0; china and flower (scikit-learn) are CC BY 2.0.
PHOTOS = {
    "astronaut": "skimage", "chelsea": "skimage", "coffee": "skimage", "rocket": "skimage",
    "hubble_deep_field": "skimage", "immunohistochemistry": "skimage", "retina": "skimage",
    "brick": "skimage", "grass": "skimage", "gravel": "skimage",
    "china": "sklearn", "flower": "sklearn",
}


def unigram_loss(train_targets: torch.Tensor, val_targets: torch.Tensor, vocab_size: int) -> float:
    """The cross-entropy, in nats per token, of ``val_targets`` under the token frequencies of
    ``train_targets`` (add-one smoothed, so no token has probability 0): the loss of a language
    model that has learned the frequencies and nothing else, the level a collapsed run sits at.
    Used in ``chapters/13_norm_placement.ipynb`` and ``chapters/15_dyt.ipynb``."""
    counts = torch.bincount(train_targets.flatten().cpu(), minlength=vocab_size)
    if counts.numel() != vocab_size:
        raise ValueError(f"vocab_size: expected more than the largest token id, got {vocab_size}")
    frequencies = (counts + 1) / (counts + 1).sum()
    return -frequencies.log()[val_targets.flatten().cpu()].mean().item()


def load_photo(name: str, short_side: int | None = None) -> torch.Tensor:
    """An RGB photo as a float32 ``(3, H, W)`` tensor in [0, 1] (grey textures are repeated to
    three channels), resized with antialiasing so that its shorter side is ``short_side``.
    ``name`` is a key of ``normlib.book.data.PHOTOS``. Used in ``chapters/06_instance_norm.ipynb`` and
    ``chapters/07_adain.ipynb``."""
    if name not in PHOTOS:
        raise ValueError(f"name: expected one of {sorted(PHOTOS)}, got {name!r}")
    if short_side is not None and (not isinstance(short_side, int) or short_side < 8):
        raise ValueError(f"short_side: expected None or an int of at least 8, got {short_side!r}")
    if PHOTOS[name] == "skimage":
        import skimage.data

        array = getattr(skimage.data, name)()
    else:
        from sklearn.datasets import load_sample_image

        array = load_sample_image(f"{name}.jpg")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    image = torch.from_numpy(np.array(array[..., :3], dtype=np.float32)).permute(2, 0, 1).div_(255)  # a writable copy
    if short_side is not None:
        scale = short_side / min(image.shape[1:])
        size = [max(short_side, round(side * scale)) for side in image.shape[1:]]
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                                align_corners=False)[0].clamp_(0, 1)
    return image


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` crop of a ``(C, H, W)`` image. Used in
    ``chapters/06_instance_norm.ipynb`` and ``chapters/07_adain.ipynb``."""
    if image.dim() != 3 or min(image.shape[1:]) < size:
        raise ValueError(f"image: expected a (C, H, W) tensor with H, W >= size = {size}, got shape {tuple(image.shape)}")
    top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
    return image[:, top:top + size, left:left + size]


def random_crops(images: list[torch.Tensor], n: int, size: int, generator: torch.Generator,
                 flip: bool = True) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops, each from an image drawn uniformly from ``images``
    (``(C, H, W)`` tensors), mirrored left-right with probability 1/2 if ``flip``; ``(n, C, size,
    size)``. Used in ``chapters/07_adain.ipynb``."""
    if not images:
        raise ValueError("images: expected at least one image")
    for i, image in enumerate(images):
        if image.dim() != 3 or min(image.shape[1:]) < size:
            raise ValueError(f"images[{i}]: expected a (C, H, W) tensor with H, W >= size = {size}, "
                             f"got shape {tuple(image.shape)}")
    crops = []
    for _ in range(n):
        image = images[torch.randint(len(images), (1,), generator=generator).item()]
        top = torch.randint(image.shape[1] - size + 1, (1,), generator=generator).item()
        left = torch.randint(image.shape[2] - size + 1, (1,), generator=generator).item()
        crop = image[:, top:top + size, left:left + size]
        if flip and torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)


def multitask_regression(sigmas, train_size: int, test_size: int, seed: int, inputs: int = 250,
                         outputs: int = 100):
    """GradNorm's toy multitask problem (Chen et al. 2018), generated: task ``i`` maps
    ``x`` to ``sigma_i * tanh((B + eps_i) x / (10 sqrt(inputs)))``, with ``B`` shared by the
    tasks, entries N(0, 10^2), and ``eps_i`` its own, entries N(0, 3.5^2). The paper does not
    give the inputs' distribution; ours are standard normal, and the division by
    ``10 sqrt(inputs)`` keeps the tanh's argument near unit scale (unscaled, it saturates into
    a sign, which the paper's four-layer network cannot fit in our budget). The tasks share
    most of their structure and differ in scale by ``sigma_i``, so their losses differ by
    ``sigma_i^2``. Returns ``((x_train, y_train), (x_test, y_test))``, targets of shape
    ``(N, tasks, outputs)``. Used in ``chapters/12_gradnorm.ipynb``."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or sigmas.numel() == 0 or not (sigmas > 0).all():
        raise ValueError(f"sigmas: expected a non-empty sequence of positive scales, got {sigmas.tolist()}")
    g = torch.Generator().manual_seed(seed)
    shared = 10.0 * torch.randn(outputs, inputs, generator=g)
    maps = shared + 3.5 * torch.randn(len(sigmas), outputs, inputs, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, inputs, generator=g)
        arguments = torch.einsum("ni,toi->nto", x, maps) / (10.0 * inputs**0.5)
        return x, sigmas[:, None] * torch.tanh(arguments)

    return sample(train_size), sample(test_size)
