"""Ensembles of teachers: one soft target from several teachers' logits.

A teacher ensemble is distilled through *equivalent logits*: logits `z`
whose softened distribution `softmax(z / T)` is the ensemble's soft target.
The soft-target loss (`keras_kd.losses.DistillationLoss`) then applies
unchanged, exactly as for a single teacher.
"""

import math
import numbers

from keras import ops

from keras_kd import losses as kd_losses

#: How the teachers' outputs are averaged (the `average` argument).
AVERAGES = ("probabilities", "logits")


def validate_average(average):
    """Checks that `average` is one of `AVERAGES` and returns it.

    Args:
        average: The value to check.

    Returns:
        `average`.

    Raises:
        ValueError: if `average` is not `"probabilities"` or `"logits"`.
    """
    if not isinstance(average, str) or average not in AVERAGES:
        raise ValueError(
            f"Expected `ensemble_average` to be one of {AVERAGES}. "
            f"Received: ensemble_average={average!r}"
        )
    return average


def normalize_weights(weights, num_teachers):
    """Checks teacher weights and returns them normalised to sum to 1.

    Args:
        weights: `None` (every teacher weighs the same) or a sequence of
            `num_teachers` finite, non-negative numbers, not all zero.
        num_teachers: Number of teachers in the ensemble.

    Returns:
        A list of `num_teachers` Python floats that sum to 1.

    Raises:
        ValueError: if `weights` has the wrong length, holds a negative,
            non-finite or non-numeric value, or sums to zero.

    Example:

    >>> keras_kd.ensemble.normalize_weights([1, 3], 2)
    [0.25, 0.75]
    """
    if weights is None:
        return [1.0 / num_teachers] * num_teachers
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise ValueError(
            f"Expected `teacher_weights` to be None or a list of "
            f"{num_teachers} numbers, one per teacher. "
            f"Received: teacher_weights={weights!r}"
        )
    weights = list(weights)
    if len(weights) != num_teachers:
        raise ValueError(
            f"Expected `teacher_weights` to hold one weight per teacher "
            f"({num_teachers} teachers). Received: teacher_weights={weights!r}"
            f" ({len(weights)} weights)"
        )
    for weight in weights:
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                "Expected `teacher_weights` to be finite, non-negative "
                f"numbers. Received: teacher_weights={weights!r}"
            )
    total = math.fsum(float(w) for w in weights)
    if total <= 0:
        raise ValueError(
            "Expected `teacher_weights` to have at least one positive "
            f"weight (they are normalised to sum to 1). "
            f"Received: teacher_weights={weights!r}"
        )
    return [float(w) / total for w in weights]


def ensemble_logits(
    teacher_logits, weights=None, temperature=1.0, average="probabilities"
):
    """Combines several teachers' logits into the ensemble's equivalent logits.

    Returns logits `z` such that `softmax(z / T)` is the ensemble's soft
    target, so that any soft-target loss written for one teacher (such as
    `keras_kd.losses.distillation_loss(z, student_logits, T)`) distils the
    ensemble unchanged.

    - `average="probabilities"` (the default) takes the weighted arithmetic
      mean of the teachers' softened distributions,
      `sum_i w_i * softmax(z_i / T)`, the ensemble target of Hinton et al.
      (2015). Its equivalent logits are
      `z = T * logsumexp_i(log w_i + log_softmax(z_i / T))`, computed in
      float32 from log-softmax so that it stays exact for confident teachers.
    - `average="logits"` takes the weighted mean of the logits,
      `z = sum_i w_i * z_i`: the soft target is then the normalised weighted
      *geometric* mean of the teachers' softened distributions. It is
      sharper where the teachers agree and does not depend on `T`.

    Teachers that output probabilities must be converted first with
    `keras_kd.losses.probabilities_to_logits` (log-probabilities), never
    passed as probabilities.

    References:

    - G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
      Network", NIPS Deep Learning Workshop, 2015
      (https://arxiv.org/abs/1503.02531): distilling an ensemble into one
      model.
    - B. Lakshminarayanan, A. Pritzel, C. Blundell, "Simple and Scalable
      Predictive Uncertainty Estimation using Deep Ensembles", NeurIPS 2017
      (https://arxiv.org/abs/1612.01474): the ensemble's prediction is the
      mean of its members' probabilities.

    Args:
        teacher_logits: A list of tensors of logits, one per teacher, all
            of the same shape `(..., num_classes)`.
        weights: `None` (equal weights) or one non-negative weight per
            teacher. Weights are normalised to sum to 1.
        temperature: Softmax temperature `T > 0` of the soft target.
        average: `"probabilities"` or `"logits"`, see above.

    Returns:
        A float32 tensor of the shape of each teacher's logits.

    Raises:
        ValueError: if the list is empty, the teachers' shapes differ, or
            `weights`, `temperature` or `average` is invalid.

    Example:

    >>> z = keras_kd.ensemble.ensemble_logits(
    ...     [[[4.0, 0.0, 0.0]], [[0.0, 4.0, 0.0]]], temperature=1.0
    ... )
    >>> keras_kd.soft_targets(z, temperature=1.0)
    ... # [[0.4912, 0.4912, 0.0177]]
    """
    temperature = kd_losses.validate_temperature(temperature)
    average = validate_average(average)
    if not isinstance(teacher_logits, (list, tuple)) or not teacher_logits:
        raise ValueError(
            "Expected `teacher_logits` to be a non-empty list of tensors, "
            f"one per teacher. Received: teacher_logits={teacher_logits!r}"
        )
    logits = [
        ops.cast(ops.convert_to_tensor(z), "float32") for z in teacher_logits
    ]
    shapes = [tuple(z.shape) for z in logits]
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError(
            "Expected the logits of every teacher to have the same shape. "
            f"Received: shapes={shapes}"
        )
    weights = normalize_weights(weights, len(logits))
    if average == "logits":
        return sum(w * z for w, z in zip(weights, logits))
    # Teachers with weight 0 contribute nothing; dropping them avoids log(0).
    terms = [
        math.log(w) + ops.log_softmax(z / temperature, axis=-1)
        for w, z in zip(weights, logits)
        if w > 0
    ]
    if len(terms) == 1:
        return temperature * terms[0]
    return temperature * ops.logsumexp(ops.stack(terms, axis=0), axis=0)
