"""Input pipelines: TFDS builders for local data, preprocessing ops, iterators.

Classification: :func:`get_dataset` resolves a registered name (:func:`registered_datasets`;
new ones with :func:`register_dataset`) to a prepared TFDS builder and :class:`DatasetInfo`;
:func:`make_train_iterator` / :func:`make_eval_iterator` yield host-local NumPy batches.
Detection: :mod:`jaxvision.data.detection`.
"""

from jaxvision.data import builders, preprocess
from jaxvision.data.datasets import (DatasetInfo, get_dataset, register_dataset,
                                     registered_datasets)
from jaxvision.data.images import load_images
from jaxvision.data.pipeline import (EvalIterable, make_eval_iterator, make_train_iterator,
                                     split_size, steps_per_epoch)
