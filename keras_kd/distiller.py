"""The `Distiller`: a `keras.Model` that trains a student from a teacher."""

import inspect
import math
import numbers
import warnings

import keras
import tensorflow as tf
from keras import ops

# Keras' own helper for MirroredStrategy loss scaling (public in spirit: every
# Keras trainer calls it); keeps our logs identical to a plain Model's.
from keras.src.losses.loss import unscale_loss_for_distribution

from keras_kd import losses as kd_losses

# Chosen by measurement on MNIST-1D (see README, "How the defaults were
# chosen"): T=2 gave the best distilled MLP among T in {1, 2, 4, 8}, and a
# small hard-label weight helps when labels exist, as Hinton et al. found.
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.1

_TEACHER_OUTPUTS = ("auto", "logits", "probabilities")
# The soft-target losses: Hinton et al.'s tempered KL, or Ba & Caruana's
# logit matching (`keras_kd.losses.logit_matching_loss`).
SOFT_LOSSES = ("kl", "mse")
_CHECKPOINT_FORMATS = (
    "a `.keras` file (ModelCheckpoint(filepath='ckpt.keras')) or "
    "weights only (ModelCheckpoint(filepath='ckpt.weights.h5', "
    "save_weights_only=True))"
)


def validate_alpha(alpha):
    """Checks that `alpha` is a number in [0, 1] and returns it as float."""
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or not 0.0 <= alpha <= 1.0
    ):
        raise ValueError(
            "Expected `alpha` (the weight of the hard-label loss) to be a "
            f"number in [0, 1]. Received: alpha={alpha!r}"
        )
    return float(alpha)


def emits_probabilities(model):
    """Whether `model`'s output layer is a softmax (so it emits probabilities).

    Looks at the layer that produces the model's output: a `Softmax` layer,
    an `Activation("softmax")`, or any layer built with
    `activation="softmax"`.

    Args:
        model: A `keras.Model`.

    Returns:
        `True` if the output layer applies a softmax, else `False` (also when
        the architecture cannot be inspected, e.g. a subclassed model).
    """
    layer = None
    outputs = getattr(model, "_outputs", None) or []
    if len(outputs) == 1:
        history = getattr(outputs[0], "_keras_history", None)
        layer = history[0] if history else None
    if layer is None:
        layers = getattr(model, "layers", None) or []
        layer = layers[-1] if layers else None
    if layer is None:
        return False
    if isinstance(layer, keras.Model) and layer is not model:
        return emits_probabilities(layer)
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _output_shape(model):
    """The model's static output shape without the batch axis, or None."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(shape, (list, tuple)) and shape and isinstance(
        shape[0], (list, tuple)
    ):
        return None  # several outputs: not a classifier we know how to check.
    return tuple(shape[1:]) if shape is not None else None


def _check_output_shapes(student_shape, teacher_shape):
    if None in (student_shape, teacher_shape):
        return
    if tuple(student_shape) != tuple(teacher_shape):
        raise ValueError(
            "The teacher and the student must produce outputs of the same "
            "shape (the same number of classes). Received: teacher output "
            f"shape={tuple(teacher_shape)}, student output "
            f"shape={tuple(student_shape)}"
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains a student model to match a teacher's softened outputs.

    Implements knowledge distillation (Hinton, Vinyals & Dean, 2015). For
    each batch the frozen teacher runs once in inference mode, outside the
    gradient tape, and the student minimises

        loss = alpha * student_loss(y, z_s)
             + (1 - alpha) * T**2 * KL(softmax(z_t / T) || softmax(z_s / T))

    `alpha` is the weight of the hard-label (student) loss and `1 - alpha`
    the weight of the soft-target loss, the convention of the keras.io
    knowledge-distillation example. The soft-target loss is computed in
    float32 from log-softmax (see `keras_kd.losses.distillation_loss`);
    gradients reach the student's weights only.

    Data may come in every form `Model.fit` takes: `(x, y)`,
    `(x, y, sample_weight)`, `class_weight=`, or `x` alone. With `x` alone
    (an unlabelled transfer set) the hard term is skipped and the student is
    trained by pure distillation. Sample and class weights weight both terms.

    `call` and `predict` run the student; `distiller.student` is the trained
    student, ready to save on its own (`distiller.student.save(...)`). The
    teacher is set to `trainable = False` and never changes.

    Args:
        student: The `keras.Model` to train. It must output logits (no final
            softmax).
        teacher: The trained `keras.Model` to learn from. It may output
            logits or probabilities (see `teacher_outputs`).
        temperature: Softmax temperature `T > 0` of the soft targets.
            Defaults to `2.0`, the best of T in {1, 2, 4, 8} for the MLP
            student on MNIST-1D (README).
        alpha: Weight in [0, 1] of the hard-label loss; `1 - alpha` weights
            the soft-target loss. Defaults to `0.1`.
        teacher_outputs: `"logits"`, `"probabilities"`, or `"auto"` (the
            default): detect a teacher whose output layer is a softmax, and
            stop on the first batch with a clear error if the teacher's
            outputs otherwise look like probabilities. Probabilities are
            turned into log-probabilities before the temperature is applied,
            so they are never softmaxed twice.
        soft_loss: The soft-target loss. `"kl"` (the default): the
            tempered KL divergence above
            (`keras_kd.losses.DistillationLoss`). `"mse"`: logit matching
            (Ba & Caruana, 2014; `keras_kd.losses.LogitMatchingLoss`), half
            the mean squared difference of the centred logits, the limit of
            the `"kl"` loss for a large temperature; `temperature` then only
            combines an ensemble's teachers.
        name: Name of the model. Defaults to `"distiller"`.

    Raises:
        ValueError: if `temperature`, `alpha`, `teacher_outputs` or
            `soft_loss` are out of range, if `teacher` and `student` are the
            same object, if the student ends in a softmax, or if their
            output shapes differ.

    Example:

    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> distiller = keras_kd.Distiller(student, teacher, temperature=2.0)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
    >>> history = distiller.fit(np.ones((4, 8)), np.zeros((4,)), verbose=0)
    """

    def __init__(
        self,
        student,
        teacher,
        *,
        temperature=DEFAULT_TEMPERATURE,
        alpha=DEFAULT_ALPHA,
        teacher_outputs="auto",
        soft_loss="kl",
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for arg, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"Expected `{arg}` to be a `keras.Model`. "
                    f"Received: {arg}={model!r}"
                )
        if student is teacher:
            raise ValueError(
                "`teacher` and `student` must be two different models; the "
                "same object was passed as both. Received: "
                f"teacher=student={student.name!r}"
            )
        if teacher_outputs not in _TEACHER_OUTPUTS:
            raise ValueError(
                f"Expected `teacher_outputs` to be one of {_TEACHER_OUTPUTS}. "
                f"Received: teacher_outputs={teacher_outputs!r}"
            )
        if not isinstance(soft_loss, str) or soft_loss not in SOFT_LOSSES:
            raise ValueError(
                f"Expected `soft_loss` to be one of {SOFT_LOSSES}. "
                f"Received: soft_loss={soft_loss!r}"
            )
        if emits_probabilities(student):
            raise ValueError(
                "The student must output logits, but its output layer applies "
                "a softmax. Remove the final softmax (e.g. use "
                "`Dense(num_classes)` without activation); add it back at "
                f"export time if needed. Received: student={student.name!r}"
            )
        self.temperature = kd_losses.validate_temperature(temperature)
        self.alpha = validate_alpha(alpha)
        self.teacher_outputs = teacher_outputs
        self._teacher_emits_probabilities = teacher_outputs == "probabilities"
        if teacher_outputs == "auto":
            self._teacher_emits_probabilities = emits_probabilities(teacher)
        _check_output_shapes(_output_shape(student), _output_shape(teacher))

        teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.soft_loss = soft_loss
        if soft_loss == "mse":
            self.soft_loss_fn = kd_losses.LogitMatchingLoss()
        else:
            self.soft_loss_fn = kd_losses.DistillationLoss(self.temperature)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self._warned_unlabelled = False
        if student.built and teacher.built:
            self.built = True

    # ------------------------------------------------------------------ #
    # Model plumbing
    # ------------------------------------------------------------------ #
    def build(self, input_shape):
        for model in (self.student, self.teacher):
            if not model.built:
                model.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss=None,
        **kwargs,
    ):
        """Configures the Distiller for training.

        Args:
            optimizer: Optimizer for the student's weights. Defaults to
                `"adam"`.
            metrics: Metrics computed on the student's predictions against
                the labels, e.g. `["accuracy"]`.
            student_loss: The hard-label loss on the student's logits.
                Defaults to
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
            **kwargs: Other arguments of `keras.Model.compile`
                (`weighted_metrics`, `jit_compile`, `steps_per_execution`...).

        Raises:
            ValueError: if `loss=` is passed (use `student_loss=`).
        """
        if "loss" in kwargs:
            raise ValueError(
                "`Distiller.compile` takes the hard-label loss as "
                "`student_loss=`; the soft-target loss is set by `temperature`"
                f" in the constructor. Received: loss={kwargs['loss']!r}"
            )
        if student_loss is None:
            student_loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            )
        super().compile(
            optimizer=optimizer, loss=student_loss, metrics=metrics, **kwargs
        )

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        student_loss = config.pop("loss", None)
        config.pop("loss_weights", None)
        self.compile(student_loss=student_loss, **config)
        if self.built:
            self.optimizer.build(self.student.trainable_variables)

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "teacher_outputs": self.teacher_outputs,
            "soft_loss": self.soft_loss,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)

    def fit(self, *args, **kwargs):
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        _check_checkpoint_callbacks(bound.arguments.get("callbacks"))
        return super().fit(*args, **kwargs)

    # ------------------------------------------------------------------ #
    # The training and evaluation steps
    # ------------------------------------------------------------------ #
    def teacher_logits(self, x):
        """The teacher's outputs on `x` as float32 logits, inference mode.

        A teacher that emits probabilities gets them turned into
        log-probabilities, which softmax maps back to the same distribution.

        Args:
            x: A batch of inputs.

        Returns:
            A float32 tensor of logits, outside any gradient.
        """
        outputs = self.teacher(x, training=False)
        if self._teacher_emits_probabilities:
            return ops.stop_gradient(kd_losses.probabilities_to_logits(outputs))
        outputs = ops.cast(outputs, "float32")
        if self.teacher_outputs == "auto":
            _assert_not_probabilities(outputs)
        return ops.stop_gradient(outputs)

    def _distillation_losses(self, x, y, sample_weight, teacher_logits, student_logits):
        """Returns (total, hard or None, soft); total is distribution-scaled."""
        _check_output_shapes(
            tuple(student_logits.shape[1:]), tuple(teacher_logits.shape[1:])
        )
        soft = self.soft_loss_fn(
            teacher_logits, student_logits, sample_weight=sample_weight
        )
        if y is None:
            self._notice_unlabelled()
            return soft, None, soft
        hard = self._compile_loss(y, student_logits, sample_weight)
        total = self.alpha * hard + (1.0 - self.alpha) * soft
        return total, hard, soft

    def _update_trackers(self, x, y, total, hard, soft):
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        unscale = unscale_loss_for_distribution
        self._loss_tracker.update_state(unscale(total), sample_weight=batch_size)
        self.distillation_loss_tracker.update_state(
            unscale(soft), sample_weight=batch_size
        )
        if hard is not None:
            self.student_loss_tracker.update_state(
                unscale(hard), sample_weight=batch_size
            )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits = self.teacher_logits(x)
        with tf.GradientTape() as tape:
            student_logits = self.student(x, training=True)
            total, hard, soft = self._distillation_losses(
                x, y, sample_weight, teacher_logits, student_logits
            )
            if self.student.losses:
                total = total + ops.cast(
                    ops.sum(self.student.losses), total.dtype
                )
            self._update_trackers(x, y, total, hard, soft)
            scaled = self.optimizer.scale_loss(total)
        variables = self.student.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._metrics_result(y, student_logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits = self.teacher_logits(x)
        student_logits = self.student(x, training=False)
        total, hard, soft = self._distillation_losses(
            x, y, sample_weight, teacher_logits, student_logits
        )
        self._update_trackers(x, y, total, hard, soft)
        return self._metrics_result(y, student_logits, sample_weight)

    def _metrics_result(self, y, student_logits, sample_weight):
        if y is not None and self._compile_metrics is not None:
            self._compile_metrics.update_state(y, student_logits, sample_weight)
        return self._collect_logs(labelled=y is not None)

    def get_metrics_result(self):
        # Called eagerly by `fit`/`evaluate` at the end of an epoch: the
        # label-based metrics only count when a labelled batch was seen.
        if not tf.executing_eagerly():
            # Keras' symbolic build (under a tf.distribute strategy) traces
            # this to create metric state: report every metric.
            return self._collect_logs(labelled=True)
        count = ops.convert_to_numpy(self.student_loss_tracker.count)
        labelled = float(count) > 0
        return self._collect_logs(labelled=labelled)

    def _collect_logs(self, labelled):
        logs = {}
        for metric in self.metrics:
            if not labelled and metric in (
                self._compile_metrics,
                self.student_loss_tracker,
            ):
                continue
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    def _notice_unlabelled(self):
        if self.alpha == 1.0:
            raise ValueError(
                "The data has no labels, so only the soft-target loss can be "
                "used, but `alpha=1` gives it zero weight. Pass labels, or a "
                f"smaller alpha. Received: alpha={self.alpha}"
            )
        if not self._warned_unlabelled:
            self._warned_unlabelled = True
            warnings.warn(
                "keras_kd.Distiller: the data has no labels (x only); "
                "training by pure distillation, the hard-label loss is "
                "skipped and `alpha` is ignored for this data.",
                stacklevel=2,
            )


def _assert_not_probabilities(outputs):
    """Stops on a teacher that emits probabilities but was not detected."""
    looks_like_probabilities = ops.logical_and(
        ops.all(outputs >= 0.0),
        ops.all(ops.abs(ops.sum(outputs, axis=-1) - 1.0) < 1e-4),
    )
    tf.debugging.Assert(
        ops.logical_not(looks_like_probabilities),
        [
            "keras_kd.Distiller: the teacher's outputs are non-negative and "
            "sum to 1, so they look like probabilities, not logits. Pass "
            "teacher_outputs='probabilities' (or 'logits' if they really are "
            "logits)."
        ],
    )


def _check_checkpoint_callbacks(callbacks):
    """Rejects, before training, checkpoints a Distiller cannot be saved to."""
    for callback in callbacks or []:
        if not isinstance(callback, keras.callbacks.ModelCheckpoint):
            continue
        path = str(callback.filepath)
        if not callback.save_weights_only and not path.endswith(".keras"):
            raise ValueError(
                "A Distiller is saved whole only in the `.keras` format; the "
                "legacy HDF5 format cannot hold it. Use "
                f"{_CHECKPOINT_FORMATS}. Received: filepath={path!r}"
            )
