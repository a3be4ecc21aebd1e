"""Claims that hold at any seed: an experiment repeated over seeds, and the spread it shows.

A chapter takes ``SEED`` (the first seed) and ``SEEDS`` (how many consecutive seeds its
experiment runs; one at ``SCALE = "ci"``). A claim's threshold comes from the spread measured
with ``SEEDS >= 5`` (``make spread CHAPTER=... SEEDS=5``), which the chapter states. Every
chapter from ``chapters/01_feature_scaling.ipynb`` to ``chapters/20_kernels.ipynb`` takes both
(``tests/test_notebooks.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from normlib import _validation as V

__all__ = ["seed_range", "spread_table"]


def seed_range(seed: int, count: int) -> list[int]:
    """The seeds an experiment runs: ``seed, seed + 1, ..., seed + count - 1``.
    Used in ``chapters/04_rms_norm.ipynb``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    V.check_positive_int(count, "count (SEEDS)")
    return list(range(int(seed), int(seed) + int(count)))


def spread_table(results: Mapping[str, Sequence[float]], seeds: Sequence[int], digits: int = 3) -> str:
    """A Markdown table with one row per measured quantity: its value at each seed, and its
    mean, smallest and largest value over the seeds. Used in ``chapters/04_rms_norm.ipynb``."""
    seeds = list(seeds)
    for name, values in results.items():
        if len(values) != len(seeds):
            raise ValueError(f"results[{name!r}] has {len(values)} values for {len(seeds)} seeds")
    V.check_positive_int(digits, "digits")
    head = "| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | min | max |"
    rule = "|---" * (len(seeds) + 4) + "|"  # the name, one per seed, mean, min, max
    rows = []
    for name, values in results.items():
        values = np.asarray(values, dtype=float)
        cells = [f"{v:.{digits}f}" for v in values]
        rows.append(f"| {name} | " + " | ".join(cells)
                    + f" | {values.mean():.{digits}f} | {values.min():.{digits}f} | {values.max():.{digits}f} |")
    return "\n".join([head, rule, *rows])
