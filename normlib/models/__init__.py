"""The small models the chapters train."""

from normlib.models.mlp import MLP

__all__ = ["MLP"]
