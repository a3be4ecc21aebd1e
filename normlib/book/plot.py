"""The book's one figure style, and figures that more than one chapter draws.

matplotlib is imported inside the functions, never when normlib is imported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from normlib import functional as NF

__all__ = ["use_style", "PALETTE", "NORM_AXES", "shared_statistics_mask", "norm_axes_figure", "show_images"]

PALETTE = ["#1f5fa8", "#d1495b", "#2e9c6a", "#edae49", "#6c4f9c", "#5c5c5c"]


def use_style() -> None:
    """Apply the book's plotting style (call once per notebook)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "figure.figsize": (6.4, 3.8),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "font.size": 10,
        "axes.titlesize": 11,
        "legend.frameon": False,
    })


# Each method as a function of an (N, C, L) tensor (L = H * W), written with normlib.
NORM_AXES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "BatchNorm": lambda x: NF.batch_norm(x, None, None, training=True),
    "LayerNorm": lambda x: NF.layer_norm(x, x.shape[1:]),
    "InstanceNorm": lambda x: NF.instance_norm(x),
    "GroupNorm (G=2)": lambda x: NF.group_norm(x, 2),
    "RMSNorm (per position)": lambda x: NF.rms_norm(x.transpose(1, 2), x.shape[1:2]).transpose(1, 2),
}


def shared_statistics_mask(norm: Callable[[torch.Tensor], torch.Tensor], shape=(6, 6, 4),
                           index=(0, 0, 0)) -> np.ndarray:
    """Which elements share their statistics with the element at ``index``.

    Found by differentiation rather than declared: an input element influences the output
    at ``index`` exactly when it enters the same mean and variance (away from a set of
    measure zero, which random inputs avoid).
    """
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    norm(x)[index].backward()
    return (x.grad != 0).numpy()


def norm_axes_figure(methods=None, shape=(6, 6, 4)):
    """The classic cube figure: for each method, the elements of an ``(N, C, H*W)`` tensor
    normalized together with one element (highlighted). Computed from normlib's functions by
    :func:`shared_statistics_mask`. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    methods = methods or NORM_AXES
    fig = plt.figure(figsize=(3.0 * len(methods), 3.3))
    for i, (name, norm) in enumerate(methods.items()):
        mask = shared_statistics_mask(norm, shape)
        ax = fig.add_subplot(1, len(methods), i + 1, projection="3d")
        # voxel axes: x = N (batch), y = C (channels), z = H*W (spatial)
        filled = np.ones(shape, dtype=bool)
        colors = np.where(mask[..., None], np.array(_rgba(PALETTE[0], 0.9)), np.array(_rgba("#dddddd", 0.25)))
        ax.voxels(filled, facecolors=colors, edgecolor="#888888", linewidth=0.3)
        ax.set_xlabel("N", labelpad=-10)
        ax.set_ylabel("C", labelpad=-10)
        ax.set_zlabel("HW", labelpad=-10)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        ax.set_box_aspect(shape)
        ax.view_init(elev=22, azim=-60)
        ax.set_title(name, pad=0)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.02, top=0.92, wspace=0.0)
    return fig


def show_images(axes, images, titles=None) -> None:
    """Draw RGB images ``(3, H, W)`` in [0, 1] (clamped) on a row of matplotlib axes, without
    ticks or grid, each with an optional small title. Used by the style chapters
    (``chapters/06_instance_norm.ipynb``, ``chapters/07_adain.ipynb``)."""
    for i, (ax, image) in enumerate(zip(axes, images)):
        ax.imshow(image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)


def _rgba(color: str, alpha: float) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return to_rgba(color, alpha)
