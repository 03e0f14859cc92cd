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

from keras_kd import ensemble as kd_ensemble
from keras_kd import cache as kd_cache
from keras_kd import losses as kd_losses

# Chosen by measurement (README, "How the defaults were chosen"): on MNIST-1D
# the 100-100 MLP distilled from the CNN on train + transfer reached 81.97,
# 81.57, 80.37 and 80.13% (mean of 3 seeds) at T = 1, 1.5, 2 and 3. T = 1.5
# ties T = 1 within noise and keeps the targets softened (T > 1). On labelled
# data alone, alpha = 0.1 tied the best hard-label weight (0.3) and beat 0.
DEFAULT_TEMPERATURE = 1.5
DEFAULT_ALPHA = 0.1

# Reverse distillation (Re-KD, Yuan et al., 2020): the teacher is the weaker
# model and often wrong, so the hard labels keep most of the weight. Chosen
# on a validation split of MNIST-1D (README, "Ensembles and reverse
# distillation"): with the MLP teacher, alpha=0.9 cost the CNN 0.5-0.8 points
# at T in {1, 4, 10} (T=1 the least) where alpha=0.5 cost 5-11 and the
# standard defaults 18.
REVERSE_TEMPERATURE = 1.0
REVERSE_ALPHA = 0.9

MODES = ("standard", "reverse")
_TEACHER_OUTPUTS = ("auto", "logits", "probabilities")
# The soft-target losses: Hinton et al.'s tempered KL, or Ba & Caruana's
# logit matching (`keras_kd.losses.logit_matching_loss`).
SOFT_LOSSES = ("kl", "mse")
_CHECKPOINT_FORMATS = (
    "a `.keras` file (ModelCheckpoint(filepath='ckpt.keras')) or "
    "weights only (ModelCheckpoint(filepath='ckpt.weights.h5', "
    "save_weights_only=True))"
)


def validate_teacher_outputs(teacher_outputs):
    """Checks `teacher_outputs` is one of "auto", "logits", "probabilities"."""
    if teacher_outputs not in _TEACHER_OUTPUTS:
        raise ValueError(
            f"Expected `teacher_outputs` to be one of {_TEACHER_OUTPUTS}. "
            f"Received: teacher_outputs={teacher_outputs!r}"
        )
    return teacher_outputs


def check_positive_int(name, value, none_ok=False):
    """Refuses `value` unless it is a positive integer (or None, if allowed)."""
    if value is None and none_ok:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        raise ValueError(
            f"Expected `{name}` to be a positive integer"
            f"{' or None' if none_ok else ''}. Received: {name}={value!r}"
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


def _check_output_shapes(student, student_shape, teachers, teacher_shapes):
    """Raises if the known output shapes of the models differ.

    Shapes are without the batch axis; `None` means not known yet (an
    unbuilt model), and is checked again on the first batch.
    """
    known = [tuple(s) for s in (student_shape, *teacher_shapes) if s is not None]
    if len(set(known)) <= 1:
        return
    if len(teachers) == 1:
        raise ValueError(
            "The teacher and the student must produce outputs of the same "
            "shape (the same number of classes). Received: teacher output "
            f"shape={tuple(teacher_shapes[0])}, student output "
            f"shape={tuple(student_shape)} (teacher {teachers[0].name!r}, "
            f"student {student.name!r})"
        )
    described = [
        f"teacher {i} {teacher.name!r} output shape={_shape_text(shape)}"
        for i, (teacher, shape) in enumerate(zip(teachers, teacher_shapes))
    ]
    raise ValueError(
        "Every teacher of the ensemble and the student must produce outputs "
        "of the same shape (the same number of classes). Received: "
        f"student {student.name!r} output shape={_shape_text(student_shape)}, "
        + ", ".join(described)
    )


def _shape_text(shape):
    return "unknown" if shape is None else str(tuple(shape))


def resolve_defaults(mode, temperature=None, alpha=None):
    """Returns `(temperature, alpha)` with `None`s replaced by `mode`'s defaults.

    - `mode="standard"`: `DEFAULT_TEMPERATURE` and `DEFAULT_ALPHA`.
    - `mode="reverse"`: `REVERSE_TEMPERATURE` and `REVERSE_ALPHA`.

    Args:
        mode: `"standard"` or `"reverse"`.
        temperature: A temperature, or `None` for the mode's default.
        alpha: A hard-label weight, or `None` for the mode's default.

    Returns:
        The validated `(temperature, alpha)` as floats.

    Raises:
        ValueError: if `mode`, `temperature` or `alpha` is invalid.
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            f"Expected `mode` to be one of {MODES}. Received: mode={mode!r}"
        )
    if mode == "reverse":
        default_temperature, default_alpha = REVERSE_TEMPERATURE, REVERSE_ALPHA
    else:
        default_temperature, default_alpha = DEFAULT_TEMPERATURE, DEFAULT_ALPHA
    temperature = default_temperature if temperature is None else temperature
    alpha = default_alpha if alpha is None else alpha
    return kd_losses.validate_temperature(temperature), validate_alpha(alpha)


def _as_teacher_list(teacher):
    """Returns `teacher` (a model or a list of models) as a list of models."""
    is_list = isinstance(teacher, (list, tuple))
    teachers = list(teacher) if is_list else [teacher]
    if not teachers or not all(isinstance(t, keras.Model) for t in teachers):
        raise ValueError(
            "Expected `teacher` to be a `keras.Model` or a non-empty list of "
            f"`keras.Model`s (an ensemble). Received: teacher={teacher!r}"
        )
    if len({id(t) for t in teachers}) != len(teachers):
        raise ValueError(
            "Expected each teacher of the ensemble once; weight a teacher "
            "with `teacher_weights` instead of repeating it. Received: "
            f"teacher={[t.name for t in teachers]}"
        )
    return teachers


def _describe_teachers(sizes):
    """`"teacher 'a' (10 parameters) is"` or `"teachers 'a' (..), 'b' (..) are"`."""
    names = ", ".join(f"{name!r} ({params:,} parameters)" for name, params in sizes)
    if len(sizes) == 1:
        return f"teacher {names} is"
    return f"teachers {names} are"


def _size_warning(mode, student, teachers):
    """The guard-rail message for teachers sized wrongly for `mode`, or None.

    Needs every model built (parameters counted with `count_params()`).
    """
    if not all(model.built for model in (student, *teachers)):
        return None
    student_params = student.count_params()
    sizes = [(t.name, t.count_params()) for t in teachers]
    if mode == "standard":
        smaller = [(n, p) for n, p in sizes if p < student_params]
        if not smaller:
            return None
        return (
            f"keras_kd.Distiller: the {_describe_teachers(smaller)} "
            "smaller than the "
            f"student {student.name!r} ({student_params:,} parameters). "
            "Standard distillation expects a stronger teacher. To learn "
            "from a weaker teacher (reverse distillation, Yuan et al. 2020)"
            ", pass mode='reverse', whose defaults suit it; if the teacher "
            "really is the stronger model, ignore this warning."
        )
    larger = [(n, p) for n, p in sizes if p > student_params]
    if not larger:
        return None
    return (
        f"keras_kd.Distiller: mode='reverse' expects a teacher smaller than "
        f"the student, but the {_describe_teachers(larger)} larger "
        "than the student "
        f"{student.name!r} ({student_params:,} parameters). To compress a "
        "larger teacher into a smaller student, use mode='standard' (the "
        "default)."
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

    **Cached teacher outputs.** On a fixed transfer set (not shuffled
    before the cache, not randomly augmented) the teacher's outputs never
    change: `keras_kd.cache_teacher_outputs(teacher, x)` runs the teachers
    once and returns a dataset whose batches carry their logits, and `fit`
    on it skips the teachers, so an epoch costs about what training the
    student alone costs (README, "Speed"). `fit` does not cache on its own,
    since it cannot prove a dataset fixed; the command line, whose
    pipelines are fixed, caches by default.

    **Sequences.** Teacher and student may output per-position logits,
    `(batch, time, classes)`, e.g. token-level distillation. Padding is
    marked by the Keras mask of the models' outputs (a `mask_zero=True`
    `Embedding` or a `Masking` layer) or by a sample weight of 0 (sample
    weights of shape `(batch, time)`). Every loss, metric and logged value is
    then averaged over the valid positions only (the sum over valid
    positions divided by their number; `evaluate` gives the mean over all
    valid positions of the dataset), and padded positions get no gradient.
    See `keras_kd.losses.valid_positions`.

    **Bad inputs.** Empty data and counts that are not counts are refused
    before the first step, and a non-finite loss stops training with a
    `ValueError` that names the epoch and step (see `fit`). Under
    `tf.distribute` strategies, mixed precision (`mixed_float16`, with loss
    scaling as for any Keras model) and `keras.callbacks.BackupAndRestore`,
    the Distiller trains like a plain Keras model.

    **Ensembles.** `teacher` may be a list of models. Every teacher runs once
    per batch (inference mode, outside the tape) and the soft target is the
    weighted mean of their softened distributions at temperature `T`
    (`ensemble_average="probabilities"`, the default), or the softened
    distribution of their weighted mean logits (`ensemble_average="logits"`,
    a normalised geometric mean of the distributions). The ensemble is
    turned into equivalent logits (`keras_kd.ensemble.ensemble_logits`), so
    the loss above applies unchanged. `teacher_weights` are normalised to
    sum to 1.

    **Reverse distillation.** `mode="reverse"` distils a *weaker* teacher
    into a stronger student, e.g. a small MLP into a large CNN: the teacher's
    soft targets act as a learned label smoothing (Yuan et al., 2020). The
    loss is the same; only the defaults differ, to suit a weaker teacher:

    | mode         | temperature (default)       | alpha (default)       |
    |--------------|-----------------------------|-----------------------|
    | `"standard"` | `DEFAULT_TEMPERATURE`       | `DEFAULT_ALPHA`       |
    | `"reverse"`  | `REVERSE_TEMPERATURE` (1.0) | `REVERSE_ALPHA` (0.9) |

    In reverse mode the hard labels keep most of the weight, since the
    teacher is often wrong: on MNIST-1D (a 62% MLP teaching a 97% CNN),
    alpha=0.5 cost the CNN 5 to 11 points of validation accuracy and
    alpha=0.9 under 1; T=1 was the best of {1, 4, 10}, measured on a
    validation split held out of `train` (README, "Ensembles and reverse
    distillation"). There reverse distillation did not beat training from
    scratch; the defaults are the least harmful setting measured, not a
    promise of a gain. Reverse distillation needs labelled data.

    When the models are built, a `UserWarning` flags a teacher that does not
    suit the mode: in standard mode, a teacher with fewer parameters than
    the student (pointing to `mode="reverse"`); in reverse mode, a teacher
    with more (pointing to `mode="standard"`).

    `call` and `predict` run the student; `distiller.student` is the trained
    student, ready to save on its own (`distiller.student.save(...)`). The
    teachers are set to `trainable = False` and never change.
    `distiller.teachers` lists them; `distiller.teacher` is the teacher of a
    single-teacher Distiller.

    References:

    - G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
      Network", NIPS Deep Learning Workshop, 2015
      (https://arxiv.org/abs/1503.02531).
    - L. Yuan, F. E. H. Tay, G. Li, T. Wang, J. Feng, "Revisiting Knowledge
      Distillation via Label Smoothing Regularization", CVPR 2020
      (https://arxiv.org/abs/1909.11723).

    Args:
        student: The `keras.Model` to train. It must output logits (no final
            softmax).
        teacher: The trained `keras.Model` to learn from, or a list of them
            (an ensemble). Teachers may output logits or probabilities (see
            `teacher_outputs`).
        temperature: Softmax temperature `T > 0` of the soft targets.
            Defaults to `None`: the mode's default (table above).
        alpha: Weight in [0, 1] of the hard-label loss; `1 - alpha` weights
            the soft-target loss. Defaults to `None`: the mode's default
            (table above).
        teacher_outputs: `"logits"`, `"probabilities"`, or `"auto"` (the
            default): detect a teacher whose output layer is a softmax, and
            stop on the first batch with a clear error if the teacher's
            outputs otherwise look like probabilities. Probabilities are
            turned into log-probabilities before the temperature is applied,
            so they are never softmaxed twice. Applies to every teacher.
        mode: `"standard"` (the default) or `"reverse"` (a weaker teacher;
            see above).
        teacher_weights: For an ensemble, `None` (equal weights, the
            default) or one finite, non-negative weight per teacher, not all
            zero. They are normalised to sum to 1.
        ensemble_average: For an ensemble, `"probabilities"` (the default:
            the weighted mean of the teachers' softened distributions) or
            `"logits"` (the weighted mean of their logits).
        soft_loss: The soft-target loss. `"kl"` (the default): the
            tempered KL divergence above
            (`keras_kd.losses.DistillationLoss`). `"mse"`: logit matching
            (Ba & Caruana, 2014; `keras_kd.losses.LogitMatchingLoss`), half
            the mean squared difference of the centred logits, the limit of
            the `"kl"` loss for a large temperature; `temperature` then only
            combines an ensemble's teachers.
        name: Name of the model. Defaults to `"distiller"`.

    Raises:
        ValueError: if `temperature`, `alpha`, `teacher_outputs`, `mode`,
            `teacher_weights`, `ensemble_average` or `soft_loss` are out of
            range, if a teacher is the student, if the student ends in a
            softmax, or if the output shapes of the models differ (which
            names each model and its shape; for unbuilt models, on the first
            batch), or if a teacher's known input shape differs from the
            student's (both take the same `x`).

    Example:

    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> distiller = keras_kd.Distiller(student, teacher, temperature=2.0)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
    >>> history = distiller.fit(np.ones((4, 8)), np.zeros((4,)), verbose=0)

    An ensemble of three teachers, weighted 2:1:1:

    >>> distiller = keras_kd.Distiller(
    ...     student, [teacher_a, teacher_b, teacher_c],
    ...     teacher_weights=[2, 1, 1],
    ... )

    Reverse distillation of a small model into a large one:

    >>> distiller = keras_kd.Distiller(large_cnn, small_mlp, mode="reverse")
    """

    def __init__(
        self,
        student,
        teacher,
        *,
        temperature=None,
        alpha=None,
        teacher_outputs="auto",
        mode="standard",
        teacher_weights=None,
        ensemble_average="probabilities",
        soft_loss="kl",
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.Model):
            raise ValueError(
                "Expected `student` to be a `keras.Model`. "
                f"Received: student={student!r}"
            )
        teachers = _as_teacher_list(teacher)
        if any(t is student for t in teachers):
            raise ValueError(
                "`teacher` and `student` must be two different models; the "
                "same object was passed as both. Received: "
                f"teacher=student={student.name!r}"
            )
        validate_teacher_outputs(teacher_outputs)
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
        self.temperature, self.alpha = resolve_defaults(mode, temperature, alpha)
        self.mode = mode
        self.ensemble_average = kd_ensemble.validate_average(ensemble_average)
        self._normalized_weights = tuple(
            kd_ensemble.normalize_weights(teacher_weights, len(teachers))
        )
        self.teacher_weights = (
            None if teacher_weights is None else [float(w) for w in teacher_weights]
        )
        self.teacher_outputs = teacher_outputs
        self._teachers_emit_probabilities = tuple(
            teacher_outputs == "probabilities"
            or (teacher_outputs == "auto" and emits_probabilities(t))
            for t in teachers
        )
        _check_output_shapes(
            student,
            _output_shape(student),
            teachers,
            [_output_shape(t) for t in teachers],
        )
        _check_input_shapes(student, teachers)

        for model in teachers:
            model.trainable = False
        self.student = student
        self.teachers = teachers
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
        self._sizes_checked = False
        self._check_sizes(stacklevel=3)
        if all(model.built for model in (student, *teachers)):
            self.built = True

    @property
    def teacher(self):
        """The teacher of a single-teacher Distiller (see `teachers`)."""
        teachers = getattr(self, "teachers", None)
        if teachers is not None and len(teachers) == 1:
            return teachers[0]
        raise AttributeError(
            "`Distiller.teacher` is defined for a single teacher only; this "
            f"Distiller distils an ensemble of {len(teachers or [])} "
            "teachers. Use `distiller.teachers`."
        )

    @property
    def is_ensemble(self):
        """Whether the Distiller has more than one teacher."""
        return len(self.teachers) > 1

    def _check_sizes(self, stacklevel):
        """Warns once if a teacher's size does not suit `mode` (built only)."""
        if self._sizes_checked:
            return
        if not all(model.built for model in (self.student, *self.teachers)):
            return
        self._sizes_checked = True
        message = _size_warning(self.mode, self.student, self.teachers)
        if message:
            warnings.warn(message, UserWarning, stacklevel=stacklevel)

    # ------------------------------------------------------------------ #
    # Model plumbing
    # ------------------------------------------------------------------ #
    def build(self, input_shape):
        for model in (self.student, *self.teachers):
            if not model.built:
                model.build(input_shape)
        self._check_sizes(stacklevel=2)
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
        """The Distiller's config, with every model serialised.

        A single-teacher Distiller keeps the config of earlier versions
        (the teacher under `"teacher"`); an ensemble stores its teachers
        under `"teachers"` with `teacher_weights` and `ensemble_average`.
        `temperature` and `alpha` are stored resolved, so a reloaded
        Distiller keeps them even if the defaults change.
        """
        config = {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
        }
        if self.is_ensemble:
            config["teachers"] = [
                keras.saving.serialize_keras_object(t) for t in self.teachers
            ]
            config["teacher_weights"] = (
                None if self.teacher_weights is None else list(self.teacher_weights)
            )
            config["ensemble_average"] = self.ensemble_average
        else:
            config["teacher"] = keras.saving.serialize_keras_object(self.teacher)
        config.update(
            {
                "temperature": self.temperature,
                "alpha": self.alpha,
                "teacher_outputs": self.teacher_outputs,
                "mode": self.mode,
                "soft_loss": self.soft_loss,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)

        def load(model_config):
            return keras.saving.deserialize_keras_object(
                model_config, custom_objects=custom_objects
            )

        config["student"] = load(config["student"])
        if "teachers" in config:
            config["teacher"] = [load(t) for t in config.pop("teachers")]
        else:
            config["teacher"] = load(config["teacher"])
        return cls(**config)

    def fit(self, *args, **kwargs):
        """Trains the student; takes the arguments of `keras.Model.fit`.

        Before the first step it refuses, naming the argument and the value
        received: empty data (`x` or `validation_data` with no samples, or
        a `tf.data.Dataset` of cardinality 0), counts that are not positive
        integers (`batch_size`, `steps_per_epoch`...), and checkpoints a
        Distiller cannot be saved to. Data of unknown size that yields no
        batch stops at the end of the first epoch, before any update.

        A non-finite loss (NaN or infinity, e.g. from non-finite inputs,
        sample weights or teacher outputs) stops training with a `ValueError` naming the epoch and the
        step (1-based, as in the progress bar). The update of that step is
        not applied, so the student keeps the weights of the step before
        (under `jit_compile=True` the check runs after the step instead).
        A NaN input does not always make the loss NaN: TensorFlow's fused
        Dense+ReLU kernels on CPU (oneDNN) may turn it into 0, so check
        data with `np.isfinite(x).all()` when in doubt.

        Args:
            *args: Positional arguments of `keras.Model.fit`.
            **kwargs: Keyword arguments of `keras.Model.fit`.

        Returns:
            A `keras.callbacks.History`.

        Raises:
            ValueError: on the bad inputs above, or a non-finite loss.

        Example:

        >>> distiller.fit(x, y, batch_size=0)
        ValueError: Expected `batch_size` to be a positive integer or None.
        Received: batch_size=0
        """
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        _check_checkpoint_callbacks(arguments.get("callbacks"))
        _check_data_arguments(arguments)
        if arguments.get("class_weight") and kd_cache.is_cached_dataset(
            arguments.get("x")
        ):  # Keras refuses the cached batches' dict of targets.
            arguments["x"] = kd_cache.with_class_weight(
                arguments["x"], arguments.pop("class_weight")
            )
        guard = _TrainingGuard(
            jit_compile=bool(self.jit_compile),
            data=_describe_data(arguments.get("x")),
        )
        arguments["callbacks"] = _add_callback(arguments.get("callbacks"), guard)
        try:
            return super().fit(**arguments)
        except tf.errors.InvalidArgumentError as error:
            if _NON_FINITE_LOSS not in str(error):
                raise
            raise guard.non_finite_error() from None

    def evaluate(self, *args, **kwargs):
        """Evaluates the student; takes the arguments of `keras.Model.evaluate`.

        Refuses empty data and counts that are not positive integers
        before the first step, like `fit`.

        Args:
            *args: Positional arguments of `keras.Model.evaluate`.
            **kwargs: Keyword arguments of `keras.Model.evaluate`.

        Returns:
            What `keras.Model.evaluate` returns: the mean `loss`,
            `student_loss`, `distillation_loss` and metrics.

        Raises:
            ValueError: if `x` has no samples (also found after the fact
                for data of unknown size), or `batch_size` or `steps` is not
                a positive integer.
        """
        if kwargs.get("_use_cached_eval_dataset"):  # `fit`'s validation.
            return super().evaluate(*args, **kwargs)
        bound = inspect.signature(keras.Model.evaluate).bind(self, *args, **kwargs)
        _check_data_arguments(
            {k: v for k, v in bound.arguments.items() if k != "self"}
        )
        result = super().evaluate(*args, **kwargs)
        count = ops.convert_to_tensor(self.distillation_loss_tracker.count)
        if not float(ops.convert_to_numpy(count)):
            raise ValueError(
                "Expected `x` to yield at least one batch to evaluate on. "
                f"Received: x={_describe_data(bound.arguments.get('x'))}, "
                "which yielded no batch"
            )
        return result

    # ------------------------------------------------------------------ #
    # The training and evaluation steps
    # ------------------------------------------------------------------ #
    def teacher_logits(self, x):
        """The teacher's (or ensemble's) outputs on `x` as float32 logits.

        Every teacher runs once, in inference mode. A teacher that emits
        probabilities gets them turned into log-probabilities, which softmax
        maps back to the same distribution. An ensemble's outputs are
        combined into equivalent logits (`keras_kd.ensemble.ensemble_logits`)
        whose softened distribution at `self.temperature` is the ensemble's
        soft target.

        Args:
            x: A batch of inputs.

        Returns:
            A float32 tensor of logits, outside any gradient.

        Raises:
            ValueError: if the teachers' output shapes differ (first batch
                of unbuilt teachers).
        """
        logits = []
        masks = []  # Keras masks of sequence outputs (padding), if any.
        for teacher, emits_probabilities in zip(
            self.teachers, self._teachers_emit_probabilities
        ):
            outputs = teacher(x, training=False)
            masks.append(kd_losses.get_keras_mask(outputs))
            if emits_probabilities:
                outputs = kd_losses.probabilities_to_logits(outputs)
            else:
                outputs = ops.cast(outputs, "float32")
                if self.teacher_outputs == "auto":
                    _assert_not_probabilities(outputs)
            logits.append(ops.stop_gradient(outputs))
        if not self.is_ensemble:
            return _with_mask(logits[0], masks)
        _check_output_shapes(
            self.student,
            None,
            self.teachers,
            [tuple(z.shape[1:]) for z in logits],
        )
        return _with_mask(
            ops.stop_gradient(self._combine_teachers(logits)),
            masks,
        )

    def _distillation_losses(self, x, y, sample_weight, teacher_logits, student_logits):
        """Returns (total, hard or None, soft); total is distribution-scaled."""
        _check_output_shapes(
            self.student,
            tuple(student_logits.shape[1:]),
            self.teachers,
            [tuple(teacher_logits.shape[1:])] * len(self.teachers),
        )
        self._check_sizes(stacklevel=5)
        _mark_valid_positions(student_logits, teacher_logits, sample_weight)
        soft = self.soft_loss_fn(
            teacher_logits, student_logits, sample_weight=sample_weight
        )
        if y is None:
            self._notice_unlabelled()
            return soft, None, soft
        hard = self._compile_loss(y, student_logits, sample_weight)
        total = self.alpha * hard + (1.0 - self.alpha) * soft
        return total, hard, soft

    def _update_trackers(self, x, y, total, hard, soft, student_logits=None):
        # Each batch's mean counts by its samples, or, for sequence outputs,
        # by its valid positions: `evaluate` gives the mean over them.
        batch_size = _tracker_weight(x, student_logits)
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
        teacher_logits, y = self._soft_target_logits(x, y)
        with tf.GradientTape() as tape:
            student_logits = self.student(x, training=True)
            total, hard, soft = self._distillation_losses(
                x, y, sample_weight, teacher_logits, student_logits
            )
            if self.student.losses:
                total = total + ops.cast(
                    ops.sum(self.student.losses), total.dtype
                )
            self._update_trackers(x, y, total, hard, soft, student_logits)
            scaled = self.optimizer.scale_loss(total)
        variables = self.student.trainable_variables
        gradients = tape.gradient(scaled, variables)
        # Stops on a non-finite loss before its update is applied (`fit`
        # names the epoch and step).
        gradients = _after_finite_check(total, gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._metrics_result(y, student_logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits, y = self._soft_target_logits(x, y)
        student_logits = self.student(x, training=False)
        total, hard, soft = self._distillation_losses(
            x, y, sample_weight, teacher_logits, student_logits
        )
        self._update_trackers(x, y, total, hard, soft, student_logits)
        return self._metrics_result(y, student_logits, sample_weight)

    def _soft_target_logits(self, x, y):
        """Returns `(teacher_logits, labels)` for a batch.

        A batch from `keras_kd.cache_teacher_outputs` carries each teacher's
        logits in `y`; they are combined as the live teachers' would be, and
        the teachers do not run. Otherwise the teachers run on `x`.
        """
        if not kd_cache.is_cached_batch(y):
            return self.teacher_logits(x), y
        cached = ops.cast(y[kd_cache.TEACHER_LOGITS], "float32")
        if cached.shape[1] != len(self.teachers):
            raise ValueError(
                "The cached teacher outputs come from "
                f"{cached.shape[1]} teacher(s), but this Distiller has "
                f"{len(self.teachers)}. Cache the outputs of the same "
                "teachers, in the same order. Received: cached logits of "
                f"shape {tuple(cached.shape)}"
            )
        logits = [cached[:, i] for i in range(cached.shape[1])]
        combined = self._combine_teachers(logits)
        return ops.stop_gradient(combined), y.get(kd_cache.LABELS)

    def _combine_teachers(self, logits):
        """One teacher's logits as they are; an ensemble's combined at T."""
        if not self.is_ensemble:
            return logits[0]
        return kd_ensemble.ensemble_logits(
            logits,
            weights=self._normalized_weights,
            temperature=self.temperature,
            average=self.ensemble_average,
        )

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
            message = (
                "keras_kd.Distiller: the data has no labels (x only); "
                "training by pure distillation, the hard-label loss is "
                "skipped and `alpha` is ignored for this data."
            )
            if self.mode == "reverse":
                message += (
                    " In mode='reverse' the teacher is the weaker model, so "
                    "without labels the student can only learn its "
                    "mistakes: pass labelled data `(x, y)`."
                )
            warnings.warn(message, stacklevel=2)


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


# ---------------------------------------------------------------------- #
# Input checks and guards of `fit`/`evaluate`; sequence masks.
# ---------------------------------------------------------------------- #
_NON_FINITE_LOSS = "keras_kd.Distiller: the loss is not finite"
_COUNT_ARGUMENTS = (
    "batch_size",
    "steps_per_epoch",
    "steps",
    "validation_batch_size",
    "validation_steps",
)


def _input_shape(model):
    """The model's static input shape without the batch axis, or None."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if not isinstance(shape, (list, tuple)) or not shape or isinstance(
        shape[0], (list, tuple, dict)
    ):
        return None  # unknown, or several inputs.
    return tuple(shape[1:])


def _check_input_shapes(student, teachers):
    """Raises if a teacher cannot take the student's inputs (known shapes)."""
    student_shape = _input_shape(student)
    if student_shape is None:
        return
    for teacher in teachers:
        shape = _input_shape(teacher)
        if shape is None or len(shape) != len(student_shape):
            continue  # Keras adapts a rank that differs by a trailing 1.
        if any(a is not None and b is not None and a != b
               for a, b in zip(shape, student_shape)):
            raise ValueError(
                "The teacher and the student must take the same inputs: "
                "each batch `x` goes to both. Received: teacher input "
                f"shape={shape}, student input shape={student_shape} "
                f"(teacher {teacher.name!r}, student {student.name!r})"
            )


def _with_mask(logits, masks):
    """`logits` carrying the logical and of the masks that are not None."""
    masks = [ops.cast(mask, "bool") for mask in masks if mask is not None]
    if masks and len(logits.shape) >= 3:
        mask = masks[0]
        for other in masks[1:]:
            mask = ops.logical_and(mask, other)
        kd_losses.set_keras_mask(logits, mask)
    return logits


def _mark_valid_positions(student_logits, teacher_logits, sample_weight):
    """Sets on sequence `student_logits` the Keras mask of its valid positions.

    Valid positions (`keras_kd.losses.valid_positions`) are those of the
    student's mask, the teachers' masks and the nonzero sample weights; the
    losses and metrics then average over them only, and padding gets no
    gradient. Outputs without a time axis are left as they are.
    """
    if len(student_logits.shape) < 3:
        return
    valid = kd_losses.valid_positions(student_logits, sample_weight)
    teacher_mask = kd_losses.get_keras_mask(teacher_logits)
    if teacher_mask is not None:
        teacher_mask = ops.cast(teacher_mask, "bool")
        valid = (
            teacher_mask if valid is None else ops.logical_and(valid, teacher_mask)
        )
    if valid is not None:
        kd_losses.set_keras_mask(student_logits, valid)


def _tracker_weight(x, student_logits):
    """What a batch's mean loss counts for in the epoch's mean.

    Its number of samples; for sequence outputs, its number of valid
    positions (all positions without a mask), so that `evaluate` reports
    the mean over valid positions of the whole dataset.
    """
    if student_logits is not None and len(student_logits.shape) >= 3:
        mask = kd_losses.get_keras_mask(student_logits)
        if mask is not None:
            return ops.sum(ops.cast(mask, "float32"))
        return ops.cast(
            ops.prod(tf.shape(student_logits)[:-1]), "float32"
        )
    return tf.shape(tf.nest.flatten(x)[0])[0]


def _after_finite_check(loss, gradients):
    """`gradients`, available only once `loss` is checked to be finite.

    The update that uses them therefore never runs for a NaN or infinite
    loss: the step stops with an error that `Distiller.fit` turns into one
    naming the epoch and step. (Under XLA the check compiles to nothing.)
    """
    check = tf.debugging.Assert(
        ops.all(ops.isfinite(loss)), [_NON_FINITE_LOSS, loss]
    )
    with tf.control_dependencies([check]):
        return [None if g is None else tf.identity(g) for g in gradients]


def _describe_data(data):
    """A short description of `data` for messages."""
    if isinstance(data, tf.data.Dataset):
        cardinality = int(data.cardinality())
        if cardinality == tf.data.UNKNOWN_CARDINALITY:
            return "a tf.data.Dataset of unknown cardinality"
        return f"a tf.data.Dataset of cardinality {cardinality}"
    shape = getattr(data, "shape", None)
    if shape is not None:
        return f"{type(data).__name__} of shape {tuple(shape)}"
    return f"{type(data).__name__}"


def _is_empty(data):
    """Whether `data` is known to hold no sample (False when unknown)."""
    if data is None:
        return False
    if isinstance(data, tf.data.Dataset):
        return int(data.cardinality()) == 0
    if isinstance(data, keras.utils.PyDataset):
        try:
            return len(data) == 0
        except TypeError:  # an infinite or unsized PyDataset.
            return False
    if isinstance(data, (list, tuple)) and len(data) == 0:
        return True
    for item in tf.nest.flatten(data):
        shape = getattr(item, "shape", None)
        if shape is not None and len(shape) > 0 and shape[0] == 0:
            return True
    return False


def _check_data_arguments(arguments):
    """Refuses, before any step, empty data and counts that are not counts.

    Args:
        arguments: The arguments of a `fit` or `evaluate` call, by name.
    """
    for name in _COUNT_ARGUMENTS:
        check_positive_int(name, arguments.get(name), none_ok=True)
    epochs = arguments.get("epochs", 1)
    if (
        isinstance(epochs, bool)
        or not isinstance(epochs, numbers.Integral)
        or epochs < 0
    ):
        raise ValueError(
            "Expected `epochs` to be a non-negative integer. "
            f"Received: epochs={epochs!r}"
        )
    x = arguments.get("x")
    if _is_empty(x):
        raise ValueError(
            "Expected `x` to hold at least one sample; an empty dataset "
            f"cannot train or be evaluated. Received: x={_describe_data(x)}"
        )
    validation = arguments.get("validation_data")
    if isinstance(validation, (list, tuple)) and validation:
        validation_x = validation[0]
    else:
        validation_x = validation
    if _is_empty(validation_x):
        raise ValueError(
            "Expected `validation_data` to hold at least one sample. "
            f"Received: validation_data={_describe_data(validation_x)}"
        )


def _add_callback(callbacks, callback):
    """`callbacks` (None, a list or a `CallbackList`) with `callback` added."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.append(callback)
        return callbacks
    return [*(callbacks or []), callback]


class _TrainingGuard(keras.callbacks.Callback):
    """`Distiller.fit`'s guard: tracks the epoch and step, stops on no data.

    It raises at the end of the first epoch if no batch came (data of
    unknown size that was empty), and makes the error of a non-finite loss,
    which the training step stops on. Under XLA, where that in-graph check
    does not run, it checks each step's logged loss instead.
    """

    def __init__(self, jit_compile=False, data="x"):
        super().__init__()
        self._check_logs = jit_compile
        # Unless it must read each step's loss (XLA), it needs nothing at
        # a batch's end: Keras may then hand the logs of every step to
        # its callbacks asynchronously, as it does with no callback.
        self.async_safe = not jit_compile
        self._data = data
        self.epoch = 0
        self.step = 0
        self.trained = False  # set at a batch's end: set, never counted

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.step = batch

    def on_train_batch_end(self, batch, logs=None):
        # Keras begins a batch before it finds data of unknown size empty,
        # so only a batch's end shows that one was trained. (Setting a flag,
        # unlike counting, is safe when Keras calls this asynchronously.)
        self.trained = True
        loss = (logs or {}).get("loss")
        if self._check_logs and loss is not None:
            if not math.isfinite(float(ops.convert_to_numpy(loss))):
                raise self.non_finite_error(applied=True)

    def on_epoch_end(self, epoch, logs=None):
        if not self.trained:
            raise ValueError(
                "Expected `x` to yield at least one batch; it yielded none "
                "in the first epoch, so nothing was trained. Received: "
                f"x={self._data}, which yielded no batch"
            )

    def non_finite_error(self, applied=False):
        if applied:  # Under XLA the in-graph check does not run.
            stopped = (
                "so training stopped after that step (under "
                "`jit_compile=True` the check follows the step, whose "
                "update is applied)"
            )
        else:
            stopped = (
                "so training stopped before that step's update (the student "
                "keeps the weights of the step before)"
            )
        return ValueError(
            "Expected a finite loss at every training step, but the loss of "
            f"epoch {self.epoch + 1}, step {self.step + 1} is NaN or "
            f"infinite, {stopped}. Look for "
            "non-finite inputs, labels, sample weights or teacher outputs in "
            "that batch (e.g. `np.isfinite(x).all()`), or lower the learning "
            f"rate. Received: a non-finite loss at epoch={self.epoch + 1}, "
            f"step={self.step + 1}"
        )
