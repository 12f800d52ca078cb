"""The applications built on the embeddings every jaxvision model returns (``pre_logits``).

=====================  ====================================================================
module                 what
=====================  ====================================================================
``apps.store``         the on-disk embedding store: chunked, resumable, L2-normalised
``apps.cli``           what the command lines share: one-line usage errors, JSON output
``apps.embed``         a jitted, batch-sharded embed step over a dataset or image files
``apps.search``        image search: faiss indexes (exact and approximate), JAX exact top-k
``apps.tag``           automatic tagging: multi-label tags, zero-training ImageNet tags
``apps.recommend``     content-based recommendation from the images a user interacted with
=====================  ====================================================================

Each of ``search``, ``tag`` and ``recommend`` is also a command line
(``python -m jaxvision.apps.search --help``). Importing this package imports none of them.
"""
