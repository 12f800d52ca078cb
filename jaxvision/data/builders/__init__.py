"""TFDS builders of our own for local data.

Classification: :mod:`digits` (scikit-learn's handwritten digits), :mod:`idx` (MNIST-layout
IDX folders) and :mod:`cifar` (CIFAR-10 python folders). Detection: :mod:`voc` (Pascal VOC XML)
and :mod:`coco` (COCO JSON).
"""

from jaxvision.data.builders.cifar import CifarFolder, cifar_builder
from jaxvision.data.builders.digits import Digits, digits_builder
from jaxvision.data.builders.folder import FolderConfig
from jaxvision.data.builders.idx import IdxFolder, idx_builder, read_idx, write_idx
