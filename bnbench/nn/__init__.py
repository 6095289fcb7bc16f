"""Layer 1: the norms and models, built by name from one registry each (norms.py, models.py).

The hand-written norms are public: `from bnbench.nn import BatchNorm` (also `bnbench.nn.norms.BatchNorm`,
and the old path `bnbench.norms.BatchNorm`)."""

from bnbench.nn.norms import BatchNorm, BatchRenorm, GhostBatchNorm, GroupNorm, LayerNorm

__all__ = ["BatchNorm", "BatchRenorm", "GhostBatchNorm", "GroupNorm", "LayerNorm"]
