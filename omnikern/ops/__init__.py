"""Kernels: one file per family, each beside its plain-torch truth in ``reference.py``."""

from omnikern.ops.l2norm import l2_normalize

__all__ = ["l2_normalize"]
