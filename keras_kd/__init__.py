"""keras_kd: knowledge distillation for Keras 3.

The public API is what this module exports:

- `Distiller`: a `keras.Model` that trains a student from a teacher, an
  ensemble of teachers, or (`mode="reverse"`) a weaker teacher.
- `cache_teacher_outputs`: runs the teacher(s) once over a fixed transfer
  set, so that later epochs and tuner trials skip them.
- `ensemble`: `ensemble_logits`, the soft target of a teacher ensemble as
  equivalent logits.
- `losses`: the soft-target loss (`distillation_loss`, `DistillationLoss`).
- `datasets`: offline MNIST-1D as a TFDS builder (importing keras_kd
  registers it, so `tfds.load("mnist1d")` works) and TFDS pipelines.
- `models`: the reference CNN teacher and MLP student.
- `training`: ready-made runs (`train_teacher`, `distill`) used by the CLI.
- `tuning`: `DistillerHyperModel`, a keras-tuner search space over the
  temperature, alpha and the soft loss, the teacher run once per search.
- `measure`: accuracy, file size and CPU latency of a model.
- `export_student`: the student as a TF SavedModel or a TFLite file.
"""

from keras_kd import cache
from keras_kd import datasets
from keras_kd import ensemble
from keras_kd import export
from keras_kd import losses
from keras_kd import measure
from keras_kd import models
from keras_kd import training
from keras_kd import tuning
from keras_kd.cache import cache_teacher_outputs
from keras_kd.distiller import Distiller
from keras_kd.ensemble import ensemble_logits
from keras_kd.export import ExportedStudent
from keras_kd.export import export_student
from keras_kd.losses import DistillationLoss
from keras_kd.losses import LogitMatchingLoss
from keras_kd.losses import distillation_loss
from keras_kd.losses import logit_matching_loss
from keras_kd.losses import soft_targets
from keras_kd.tuning import DistillerHyperModel

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "DistillationLoss",
    "DistillerHyperModel",
    "ExportedStudent",
    "LogitMatchingLoss",
    "cache",
    "cache_teacher_outputs",
    "datasets",
    "distillation_loss",
    "ensemble",
    "ensemble_logits",
    "export",
    "export_student",
    "logit_matching_loss",
    "losses",
    "measure",
    "models",
    "soft_targets",
    "training",
    "tuning",
]
