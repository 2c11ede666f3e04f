"""lift_jax: LiFT (human-feedback alignment of text-to-video models) on JAX."""

__version__ = "0.1.0"
