"""Soft-target (knowledge-distillation) losses.

A loss here is a plain function plus a thin `keras.losses.Loss` class around
it, the way Keras keeps its own losses.
"""

import math
import numbers

import keras
from keras import ops

try:  # Keras' accessors for the `_keras_mask` of a tensor (Keras >= 3.6).
    from keras.src.backend.common.masking import get_keras_mask
    from keras.src.backend.common.masking import set_keras_mask
except ImportError:  # pragma: no cover

    def get_keras_mask(x):
        return getattr(x, "_keras_mask", None)

    def set_keras_mask(x, mask):
        x._keras_mask = mask

_EPSILON = 1e-12


def validate_temperature(temperature):
    """Checks that `temperature` is a finite number > 0 and returns it as float.

    Args:
        temperature: The value to check.

    Returns:
        `temperature` as a Python float.

    Raises:
        ValueError: if `temperature` is not a finite number greater than 0.
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            "Expected `temperature` to be a finite number greater than 0. "
            f"Received: temperature={temperature!r}"
        )
    return float(temperature)


def probabilities_to_logits(probabilities):
    """Turns probabilities into logits that reproduce them under softmax.

    `log(p)` differs from the original logits by a per-row constant, and
    softmax is invariant to such constants, so `softmax(log(p) / T)` equals
    `softmax(z / T)` for the teacher's pre-softmax logits `z`. This is how a
    teacher that ends in a softmax is distilled without a second softmax.

    Args:
        probabilities: Tensor of probabilities, classes on the last axis.

    Returns:
        A float32 tensor of log-probabilities (usable as logits).
    """
    probabilities = ops.cast(probabilities, "float32")
    return ops.log(ops.maximum(probabilities, _EPSILON))


def soft_targets(teacher_logits, temperature=1.0):
    """Returns the teacher's softened distribution, `softmax(z_t / T)`.

    Args:
        teacher_logits: Tensor of teacher logits, classes on the last axis.
        temperature: Softmax temperature `T > 0`.

    Returns:
        A float32 tensor of probabilities with the shape of `teacher_logits`.

    Example:

    >>> keras_kd.losses.soft_targets([[2.0, 1.0, 0.0]], temperature=10.0)
    ... # [[0.3672, 0.3322, 0.3006]]
    """
    temperature = validate_temperature(temperature)
    z = ops.cast(ops.convert_to_tensor(teacher_logits), "float32")
    return ops.softmax(z / temperature, axis=-1)


def distillation_loss(teacher_logits, student_logits, temperature=1.0):
    """Hinton et al.'s soft-target loss, one value per sample.

    Computes `T**2 * KL(softmax(z_t / T) || softmax(z_s / T))` from
    log-softmax in float32, whatever the inputs' dtype (so it stays exact
    under mixed precision). The `T**2` factor keeps the gradient's scale
    independent of `T`, so that the soft and hard terms can be mixed with a
    fixed weight.

    Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in
    a Neural Network", NIPS Deep Learning Workshop, 2015
    (https://arxiv.org/abs/1503.02531).

    Both inputs are *logits*. For a teacher that outputs probabilities, pass
    `keras_kd.losses.probabilities_to_logits(p)`, never `p` itself.

    Args:
        teacher_logits: Tensor of shape `(..., num_classes)`.
        student_logits: Tensor of the same shape.
        temperature: Softmax temperature `T > 0`.

    Returns:
        A float32 tensor of shape `(...)`: the loss per sample (per position
        for sequence outputs), reduced over the class axis only.

    Raises:
        ValueError: if `temperature` is not a finite number > 0.

    Example:

    >>> keras_kd.losses.distillation_loss([[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])
    ... # [0.2662]
    """
    temperature = validate_temperature(temperature)
    z_t = ops.cast(ops.convert_to_tensor(teacher_logits), "float32")
    z_s = ops.cast(ops.convert_to_tensor(student_logits), "float32")
    log_p_t = ops.log_softmax(z_t / temperature, axis=-1)
    log_p_s = ops.log_softmax(z_s / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return (temperature**2) * kl


def valid_positions(y_pred, sample_weight=None):
    """The valid (non-padding) positions of sequence outputs, or `None`.

    For outputs with a time axis, e.g. token logits of shape
    `(batch, time, classes)`, a position is *valid* when the Keras mask of
    `y_pred` is `True` there (the mask a `mask_zero=True` `Embedding` or a
    `Masking` layer propagates) and its sample weight is not 0. Sample
    weights may be given per sequence, `(batch,)`, or per position,
    `(batch, time)`; a weight of 0 marks padding exactly as the mask does.

    The soft-target losses of keras_kd (and, inside the `Distiller`, every
    loss and metric) average over the valid positions only: with the default
    `"sum_over_batch_size"` reduction a batch's loss is
    `sum(weight * loss over valid positions) / number of valid positions`,
    and padded positions get no gradient.

    Args:
        y_pred: The predicted logits; its Keras mask, if any, is used.
        sample_weight: Optional sample weights of shape `(batch,)` or
            `(batch, time)`.

    Returns:
        A boolean tensor with the shape of `y_pred` without its last axis,
        or `None` for outputs without a time axis (rank < 3) and for
        sequences with neither a mask nor sample weights.

    Example:

    >>> logits = keras.ops.zeros((2, 4, 5))
    >>> weights = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    >>> keras_kd.losses.valid_positions(logits, weights)
    ... # [[True, True, False, False], [True, True, True, True]]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) < 3:
        return None
    valid = get_keras_mask(y_pred)
    if valid is not None:
        valid = ops.cast(valid, "bool")
    if sample_weight is not None:
        weight = ops.convert_to_tensor(sample_weight)
        if len(weight.shape) == len(y_pred.shape) and weight.shape[-1] == 1:
            weight = ops.squeeze(weight, axis=-1)
        nonzero = ops.not_equal(weight, ops.zeros((), weight.dtype))
        while len(nonzero.shape) < len(y_pred.shape) - 1:
            nonzero = ops.expand_dims(nonzero, axis=-1)
        if valid is None:
            valid = ops.ones_like(y_pred[..., 0], dtype="bool")
        valid = ops.logical_and(valid, nonzero)
    return valid


@keras.saving.register_keras_serializable(package="keras_kd")
class DistillationLoss(keras.losses.Loss):
    """Soft-target loss of Hinton et al. (2015) as a `keras.losses.Loss`.

    `y_true` is the teacher's logits and `y_pred` the student's logits; the
    loss is `T**2 * KL(softmax(y_true / T) || softmax(y_pred / T))`, computed
    in float32 from log-softmax (see `keras_kd.losses.distillation_loss`).
    Unlike `keras.losses.KLDivergence`, which expects probabilities and clips
    them, it takes logits and applies the temperature itself.

    **Sequences.** For logits of shape `(batch, time, classes)` the loss is
    computed per position and averaged over the valid positions only: those
    where the Keras mask of `y_pred` is `True` (a `mask_zero=True`
    `Embedding` or a `Masking` layer sets it) and, if `sample_weight` is
    given, the weight is not 0. With the default reduction a batch's loss
    is `sum(weight * loss over valid positions) / number of valid
    positions`; padded positions get no gradient (see
    `keras_kd.losses.valid_positions`).

    Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in
    a Neural Network", 2015 (https://arxiv.org/abs/1503.02531).

    Args:
        temperature: Softmax temperature `T > 0`. Defaults to `1.0`.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"distillation_loss"`.

    Raises:
        ValueError: if `temperature` is not a finite number > 0.

    Example:

    >>> loss = keras_kd.losses.DistillationLoss(temperature=2.0)
    >>> loss([[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])  # 0.3137
    """

    def __init__(
        self,
        temperature=1.0,
        reduction="sum_over_batch_size",
        name="distillation_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = validate_temperature(temperature)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras applies the mask of `y_pred`; zero sample weights of
        # sequence outputs mark padding too (see `valid_positions`).
        if sample_weight is not None:
            valid = valid_positions(y_pred, sample_weight)
            if valid is not None:
                y_pred = ops.copy(y_pred)
                set_keras_mask(y_pred, valid)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        return distillation_loss(y_true, y_pred, self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


def logit_matching_loss(teacher_logits, student_logits):
    """Logit-matching soft-target loss (Ba & Caruana, 2014), one value per sample.

    Computes `0.5 * mean((c(z_s) - c(z_t))**2)` over the class axis in
    float32, where `c(z) = z - mean(z)` centres each sample's logits. This is
    the mean squared error on logits with which Ba & Caruana trained shallow
    students to mimic deep teachers, with two choices made so that it mixes
    with the hard-label loss like `distillation_loss` does:

    - The logits are centred. Softmax ignores a per-sample offset, so the
      loss does too: a teacher that emits probabilities (distilled from its
      log-probabilities) is matched the same as its logits.
    - The factor `0.5` and the mean over classes make it the limit of
      `distillation_loss(z_t, z_s, T)` as `T` grows (Hinton et al., 2015,
      section 2.1); for logits of standard deviation 4 the two differ by
      2% at `T = 10` and 0.5% at `T = 20`. No temperature applies here.

    References:

    - J. Ba, R. Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS
      2014 (https://arxiv.org/abs/1312.6184).
    - G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
      Network", 2015 (https://arxiv.org/abs/1503.02531).

    Args:
        teacher_logits: Tensor of shape `(..., num_classes)`.
        student_logits: Tensor of the same shape.

    Returns:
        A float32 tensor of shape `(...)`: the loss per sample.

    Example:

    >>> keras_kd.losses.logit_matching_loss([[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])
    ... # [0.3333]
    """
    z_t = ops.cast(ops.convert_to_tensor(teacher_logits), "float32")
    z_s = ops.cast(ops.convert_to_tensor(student_logits), "float32")
    z_t = z_t - ops.mean(z_t, axis=-1, keepdims=True)
    z_s = z_s - ops.mean(z_s, axis=-1, keepdims=True)
    return 0.5 * ops.mean(ops.square(z_s - z_t), axis=-1)


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitMatchingLoss(keras.losses.Loss):
    """Logit-matching soft-target loss (Ba & Caruana, 2014) as a Keras loss.

    `y_true` is the teacher's logits and `y_pred` the student's logits; the
    loss is half the mean squared difference of the per-sample centred
    logits (see `keras_kd.losses.logit_matching_loss`). It is the
    `Distiller`'s soft-target loss with `soft_loss="mse"`.

    Reference: J. Ba, R. Caruana, "Do Deep Nets Really Need to be Deep?",
    NeurIPS 2014 (https://arxiv.org/abs/1312.6184).

    Args:
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"logit_matching_loss"`.

    Example:

    >>> loss = keras_kd.losses.LogitMatchingLoss()
    >>> loss([[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])  # 0.3333
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="logit_matching_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return logit_matching_loss(y_true, y_pred)
