"""jaxvision: image recognition in JAX (Flax Linen, Optax, TFDS, Orbax)."""

__version__ = "0.1.0"
