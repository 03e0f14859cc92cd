"""keras_kd: knowledge distillation for Keras 3.

Public API: `Distiller`, the `losses` module and the `datasets` module
(importing keras_kd registers the offline MNIST-1D tensorflow-datasets
builder, so `tfds.load("mnist1d")` works).
"""

from keras_kd import losses
from keras_kd.distiller import Distiller
from keras_kd.losses import DistillationLoss, distillation_loss, soft_targets

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "DistillationLoss",
    "distillation_loss",
    "losses",
    "soft_targets",
]
