"""bnbench: what does Batch Normalization do to training? Experiments from YAML configs."""

__version__ = "0.1.0"
