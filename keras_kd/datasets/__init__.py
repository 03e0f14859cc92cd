"""Datasets for distillation: MNIST-1D and TFDS input pipelines.

Importing this package registers the offline MNIST-1D TFDS builder, so
that `tfds.load("mnist1d")` works; no data are generated at import.
"""

from keras_kd.datasets.availability import EMBEDDED
from keras_kd.datasets.availability import DatasetNotAvailableError
from keras_kd.datasets.availability import network_available
from keras_kd.datasets.mnist1d import INPUT_SHAPE
from keras_kd.datasets.mnist1d import NUM_CLASSES
from keras_kd.datasets.mnist1d import TRANSFER_SEED
from keras_kd.datasets.mnist1d import Mnist1d
from keras_kd.datasets.mnist1d import load_mnist1d
from keras_kd.datasets.pipeline import DatasetSplits
from keras_kd.datasets.pipeline import load
from keras_kd.datasets.pipeline import transfer_set
