"""TFDS builders of our own for local data; importing it registers their dataset names.

Classification: :mod:`digits` (scikit-learn's handwritten digits), :mod:`idx` (MNIST-layout
IDX folders), :mod:`imagefolder` (folders or zips of image files, one folder per class) and
:mod:`cifar` (CIFAR-10 python folders, or its JPEG zip through :mod:`imagefolder`) each
register their names with ``jaxvision.data.datasets.register_dataset``. Detection: :mod:`voc`
(Pascal VOC XML) and :mod:`coco` (COCO JSON). All of them derive from
:class:`local.LocalBuilder` (one line of ours when records are prepared, no TFDS download
banner or config warning, progress bars only on a terminal) and key their prepared records by
the content of the source files (:func:`local.file_stamp`), so an edited folder is prepared
again.

A new classification dataset is one new module here that registers its name, plus its import
below. The import order is the order ``registered_datasets()`` lists the names in.
"""

# Registration order: digits, mnist, fashion_mnist, idx:<folder>, imagefolder:<path>, cifar10.
from jaxvision.data.builders.digits import Digits, digits_builder  # isort: skip
from jaxvision.data.builders.idx import IdxFolder, idx_builder, read_idx, write_idx  # isort: skip
from jaxvision.data.builders.imagefolder import ImageFolder, imagefolder_builder  # isort: skip
from jaxvision.data.builders.cifar import CifarFolder, cifar_builder  # isort: skip
from jaxvision.data.builders.folder import FolderConfig
