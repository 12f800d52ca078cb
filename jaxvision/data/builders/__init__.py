"""Local-data TFDS builders (one module per source format)."""
