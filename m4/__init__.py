"""m4: any-to-any multimodal masked modeling (4M / 4M-21) in JAX and Flax NNX."""

__version__ = "0.1.0"
