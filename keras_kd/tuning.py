"""Hyperparameter search over the distillation temperature and loss weight.

`DistillerHyperModel` is a `keras_tuner.HyperModel` whose `build(hp)`
returns a compiled `keras_kd.Distiller`: the search space (temperature,
alpha, optionally the soft loss, the learning rate and anything the
student-building function declares) lives in `build`, so every keras-tuner
tuner (`RandomSearch`, `BayesianOptimization`, `Hyperband`) can search it.

For fixed, non-augmented data the teacher's outputs do not depend on any
hyperparameter (the cache holds raw logits; the temperature is applied
later), so `DistillerHyperModel.fit` runs the teacher once per dataset and
search (`keras_kd.cache_teacher_outputs`, memoised on the identity of the
data objects) and every trial and epoch reuses the result.

`run_search` is the ready-made MNIST-1D run behind `keras-kd tune`.
"""

import json
import math
import numbers
import os
import time
import weakref

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from keras_kd import _files
from keras_kd import cache as kd_cache
from keras_kd import datasets
from keras_kd import measure
from keras_kd import models
from keras_kd import training
from keras_kd.distiller import DEFAULT_ALPHA
from keras_kd.distiller import DEFAULT_TEMPERATURE
from keras_kd.distiller import SOFT_LOSSES
from keras_kd.distiller import Distiller
from keras_kd.losses import validate_temperature

# Names of the hyperparameters `DistillerHyperModel` declares.
TEMPERATURE = "temperature"
ALPHA = "alpha"
SOFT_LOSS = "soft_loss"
LEARNING_RATE = "learning_rate"

DEFAULT_TEMPERATURE_RANGE = (1.0, 20.0)
DEFAULT_ALPHA_RANGE = (0.0, 1.0)
DEFAULT_LEARNING_RATE = 1e-3
# The student's accuracy on the validation data, to maximise.
DEFAULT_OBJECTIVE = keras_tuner.Objective("val_accuracy", "max")
TUNERS = ("random", "bayesian", "hyperband")

_DISTILLER_ARGUMENTS = ("student", "teacher", TEMPERATURE, ALPHA, SOFT_LOSS)
_SHUFFLE_BUFFER = 50_000


def _is_number(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_range(name, value, low, high, *, log):
    """Returns `("range", lo, hi)` or `("fixed", v)` for a search argument."""
    if isinstance(value, (list, tuple)):
        ok = (
            len(value) == 2
            and all(_is_number(v) for v in value)
            and low <= value[0] < value[1] <= high
            and (not log or value[0] > 0)
        )
        if not ok:
            bound = "0 < min" if log else f"{low} <= min"
            upper = "" if high == math.inf else f" <= {high}"
            raise ValueError(
                f"Expected `{name}` to be a `(min, max)` range with "
                f"{bound} < max{upper} (searched on a "
                f"{'log' if log else 'linear'} scale), or a number to fix "
                f"it. Received: {name}={value!r}"
            )
        return ("range", float(value[0]), float(value[1]))
    if not _is_number(value) or not low <= value <= high or (log and value <= 0):
        raise ValueError(
            f"Expected `{name}` to be a `(min, max)` range or a number in "
            f"{'(0' if log else f'[{low}'}, {high}]. Received: {name}={value!r}"
        )
    return ("fixed", float(value))


def _check_soft_losses(soft_loss):
    choices = (soft_loss,) if isinstance(soft_loss, str) else soft_loss
    if (
        not isinstance(choices, (list, tuple))
        or not choices
        or not all(isinstance(c, str) and c in SOFT_LOSSES for c in choices)
        or len(set(choices)) != len(choices)
    ):
        raise ValueError(
            f"Expected `soft_loss` to be one of {SOFT_LOSSES}, or a list of "
            "distinct ones to search over. Received: "
            f"soft_loss={soft_loss!r}"
        )
    return tuple(choices)


def _teacher_list(teacher):
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not teachers or not all(isinstance(t, keras.Model) for t in teachers):
        raise ValueError(
            "Expected `teacher` to be a trained `keras.Model` or a non-empty "
            f"list of them (an ensemble). Received: teacher={teacher!r}"
        )
    return teachers


def _objective_names(objective):
    """The log names an objective reads (several for a `MultiObjective`)."""
    if objective is None:
        return None
    inner = getattr(objective, "objectives", None)
    if inner is not None:
        return [o.name for o in inner]
    return [objective.name]


def _is_default_objective(objective):
    return type(objective).__name__ == "DefaultObjective"


def _find_objective(callbacks):
    """The objective of the tuner running this trial, from its callbacks.

    keras-tuner passes a `TunerCallback` (holding the tuner) and a
    `SaveBestEpoch` (holding the objective) to `HyperModel.fit`.
    """
    for callback in callbacks:
        oracle = getattr(getattr(callback, "tuner", None), "oracle", None)
        objective = getattr(oracle, "objective", None)
        if isinstance(objective, keras_tuner.Objective):
            return objective
    for callback in callbacks:
        objective = getattr(callback, "objective", None)
        if isinstance(objective, keras_tuner.Objective):
            return objective
    return None


class _ObjectiveCheck(keras.callbacks.Callback):
    """Stops the search at the first epoch whose logs lack the objective."""

    def __init__(self, names, validation):
        super().__init__()
        self.names = names
        self.validation = validation
        self.checked = False

    def on_epoch_end(self, epoch, logs=None):
        if self.checked:
            return
        logs = logs or {}
        missing = [name for name in self.names if name not in logs]
        if not missing:
            self.checked = True
            return
        validated = any(key.startswith("val_") for key in logs)
        if self.validation and not validated and all(
            name.startswith("val_") for name in missing
        ):
            return  # No validation this epoch (`validation_freq`): wait.
        hint = ""
        if any(name.startswith("val_") for name in missing) and not validated:
            hint = (
                " `val_` names need validation data: pass "
                "`validation_data=` to `tuner.search()`."
            )
        raise keras_tuner.errors.FatalValueError(
            "Expected the tuner's objective to be one of the names the "
            f"Distiller logs: {sorted(logs)}. Metrics come from "
            "`DistillerHyperModel(metrics=...)`, prefixed with `val_` on "
            f"the validation data.{hint} Received: objective="
            f"{missing[0] if len(missing) == 1 else missing!r}"
        )


class DistillerHyperModel(keras_tuner.HyperModel):
    """A keras-tuner search space of `keras_kd.Distiller`s.

    `build(hp)` declares the distillation hyperparameters, builds a fresh
    student with `build_student(hp)` and returns a compiled `Distiller`:

    | name              | declared when                 | scale  |
    |-------------------|-------------------------------|--------|
    | `"temperature"`   | `temperature` is a range      | log    |
    | `"alpha"`         | `alpha` is a range            | linear |
    | `"soft_loss"`     | `soft_loss` lists choices     | choice |
    | `"learning_rate"` | `learning_rate` is a range    | log    |

    With `soft_loss=["kl", "mse"]`, `"temperature"` is conditional: active
    only when `"soft_loss"` is `"kl"` (logit matching has no temperature).
    Any other hyperparameter, conditional or not, is declared by
    `build_student` (e.g. `hp.Int("units", 32, 256)`) or by a subclass
    overriding `build` or `distillation_hyperparameters`.

    **The teacher runs once per search.** With `cache=True` (the default),
    `fit` runs the teacher(s) once over each training and validation
    dataset (`keras_kd.cache_teacher_outputs`) and keeps the result,
    memoised on the identity of the data objects that `tuner.search()`
    passes to every trial: a search of N trials of E epochs costs one
    teacher pass over the data, not N x E. The cache holds raw logits, so it
    is valid for every temperature. The data must be fixed: NumPy arrays,
    tensors, or an unshuffled, non-augmented `tf.data.Dataset` (a shuffled
    or randomly augmented one is refused); `fit` shuffles the cached
    training data itself (`seed`). Use `cache=False` for augmented data:
    the teacher then runs on every batch, as in `Distiller.fit`. A dataset
    that already comes from `cache_teacher_outputs` is used as is.

    **Objective.** Create the tuner with an objective the Distiller logs:
    `loss`, `student_loss`, `distillation_loss`, every compiled metric, and
    their `val_` forms. `DEFAULT_OBJECTIVE` (the student's `val_accuracy`,
    maximised) is the default of `build_tuner`. An objective that no log
    carries stops the search at the end of the first epoch of the first
    trial, with the list of the available names.

    **Reproducibility.** With an integer `seed`, every trial starts from
    `keras.utils.set_random_seed(seed)` and sees the same order of training
    batches, so trials differ by their hyperparameters only (for the same
    student architecture, the same initial weights).

    Args:
        build_student: A function `build_student(hp)` returning a new,
            untrained student `keras.Model` (logits output) on each call. It
            may declare hyperparameters in `hp`.
        teacher: The trained teacher `keras.Model`, or a list of them (an
            ensemble).
        temperature: A `(min, max)` range searched on a log scale, or a
            number to fix it. Defaults to `(1.0, 20.0)`.
        alpha: The weight of the hard-label loss: a `(min, max)` range in
            [0, 1], or a number to fix it. Defaults to `(0.0, 1.0)`. It only
            acts on labelled data.
        soft_loss: `"kl"` (the default), `"mse"`, or a list of them to
            search (see `keras_kd.Distiller`).
        learning_rate: A number (the default, 1e-3) or a `(min, max)` range
            searched on a log scale.
        optimizer: An optimizer name (default `"adam"`) or a function
            `optimizer(learning_rate)` returning a new optimizer (e.g. with
            a learning-rate schedule).
        metrics: Metrics of the student's predictions. Defaults to
            `("accuracy",)`.
        student_loss: The hard-label loss (see `Distiller.compile`).
        cache: Whether `fit` caches the teacher's outputs (see above).
        seed: `None` (the default) or an integer seeding each trial.
        distiller_kwargs: Other `Distiller` arguments, e.g.
            `{"mode": "reverse"}` or `{"teacher_weights": [2, 1]}`.
        name: Name of the hypermodel.
        tunable: Whether the hyperparameters declared here join the search
            space (see `keras_tuner.HyperModel`).

    Raises:
        ValueError: if an argument is out of range, naming it and the value
            received.

    Example:

    >>> hypermodel = keras_kd.DistillerHyperModel(
    ...     lambda hp: keras_kd.models.mlp_student(
    ...         (40,), 10, hidden=(hp.Int("units", 32, 128, step=32),) * 2),
    ...     teacher)
    >>> tuner = keras_kd.tuning.build_tuner(hypermodel, "random",
    ...                                     max_trials=8, directory="tune")
    >>> tuner.search(x, y, validation_data=(x_val, y_val), epochs=15)
    >>> keras_kd.tuning.save_best_student(tuner, "tune/best_student.keras")
    """

    def __init__(
        self,
        build_student,
        teacher,
        *,
        temperature=DEFAULT_TEMPERATURE_RANGE,
        alpha=DEFAULT_ALPHA_RANGE,
        soft_loss="kl",
        learning_rate=DEFAULT_LEARNING_RATE,
        optimizer="adam",
        metrics=("accuracy",),
        student_loss=None,
        cache=True,
        seed=None,
        distiller_kwargs=None,
        name="distiller_hypermodel",
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if not callable(build_student) or isinstance(build_student, keras.Model):
            raise ValueError(
                "Expected `build_student` to be a function `build_student(hp)`"
                " that returns a new student model on each call (each trial "
                "trains its own). Received: "
                f"build_student={build_student!r}"
            )
        self.build_student = build_student
        self.teacher = teacher
        self.teachers = _teacher_list(teacher)
        self.temperature = _check_range(
            TEMPERATURE, temperature, 0.0, math.inf, log=True
        )
        if self.temperature[0] == "fixed":
            validate_temperature(self.temperature[1])
        self.alpha = _check_range(ALPHA, alpha, 0.0, 1.0, log=False)
        self.soft_losses = _check_soft_losses(soft_loss)
        self.learning_rate = _check_range(
            LEARNING_RATE, learning_rate, 0.0, math.inf, log=True
        )
        if not (isinstance(optimizer, str) or callable(optimizer)):
            raise ValueError(
                "Expected `optimizer` to be an optimizer name or a function "
                "`optimizer(learning_rate)` returning a new optimizer. "
                f"Received: optimizer={optimizer!r}"
            )
        self.optimizer = optimizer
        self.metrics = list(metrics or [])
        self.student_loss = student_loss
        if not isinstance(cache, bool):
            raise ValueError(
                f"Expected `cache` to be a bool. Received: cache={cache!r}"
            )
        self.cache = cache
        if seed is not None and not isinstance(seed, numbers.Integral):
            raise ValueError(
                f"Expected `seed` to be None or an int. Received: seed={seed!r}"
            )
        self.seed = seed
        distiller_kwargs = dict(distiller_kwargs or {})
        clashing = sorted(set(distiller_kwargs) & set(_DISTILLER_ARGUMENTS))
        if clashing:
            raise ValueError(
                "Expected `distiller_kwargs` without the arguments the "
                f"hypermodel sets itself {_DISTILLER_ARGUMENTS}; use the "
                "hypermodel's own arguments. Received: "
                f"distiller_kwargs with {clashing}"
            )
        self.distiller_kwargs = distiller_kwargs
        self.teacher_passes = 0
        self._cached = {}
        self._last_student = None

    # ------------------------------------------------------------------ #
    # The search space
    # ------------------------------------------------------------------ #
    def distillation_hyperparameters(self, hp):
        """Declares the distillation hyperparameters in `hp`.

        Override it to change the distillation part of the space; the
        student's part is `build_student`'s.

        Args:
            hp: A `keras_tuner.HyperParameters`.

        Returns:
            A dict of `Distiller` arguments: `soft_loss`, `alpha` and, when
            it applies, `temperature`.
        """
        if len(self.soft_losses) > 1:
            soft_loss = hp.Choice(SOFT_LOSS, list(self.soft_losses))
            with hp.conditional_scope(SOFT_LOSS, ["kl"]):
                temperature = self._declare(hp, TEMPERATURE, self.temperature)
        else:
            soft_loss = self.soft_losses[0]
            temperature = None
            if soft_loss == "kl":
                temperature = self._declare(hp, TEMPERATURE, self.temperature)
        arguments = {
            SOFT_LOSS: soft_loss,
            ALPHA: self._declare(hp, ALPHA, self.alpha),
        }
        if soft_loss == "kl" and temperature is not None:
            arguments[TEMPERATURE] = temperature
        return arguments

    @staticmethod
    def _declare(hp, name, spec):
        if spec[0] == "fixed":
            return spec[1]
        log = name != ALPHA
        return hp.Float(
            name, spec[1], spec[2], sampling="log" if log else "linear"
        )

    def build(self, hp):
        """Returns a compiled `Distiller` for the hyperparameters in `hp`.

        Args:
            hp: A `keras_tuner.HyperParameters`.

        Returns:
            A compiled, built `keras_kd.Distiller` with a new student.

        Raises:
            ValueError: if `build_student` does not return a new
                `keras.Model`.
        """
        arguments = self.distillation_hyperparameters(hp)
        learning_rate = self._declare(hp, LEARNING_RATE, self.learning_rate)
        if self.seed is not None:
            keras.utils.set_random_seed(int(self.seed))
        student = self.build_student(hp)
        if not isinstance(student, keras.Model):
            raise ValueError(
                "Expected `build_student(hp)` to return a `keras.Model`. "
                f"Received: {student!r}"
            )
        last = self._last_student() if self._last_student else None
        if student is last:
            raise ValueError(
                "Expected `build_student(hp)` to build a new student on each "
                "call; it returned the same model twice, so a trial would "
                "start from the previous trial's weights. Received: "
                f"student={student.name!r}"
            )
        self._last_student = weakref.ref(student)
        distiller = Distiller(
            student, self.teacher, **arguments, **self.distiller_kwargs
        )
        if not distiller.built:
            shape = getattr(self.teachers[0], "input_shape", None)
            if shape is not None:
                distiller.build(shape)
        distiller.compile(
            optimizer=self._make_optimizer(learning_rate),
            metrics=[_fresh_metric(m) for m in self.metrics],
            student_loss=self.student_loss,
        )
        if distiller.built:
            # Built now, a checkpoint's optimizer state loads too (Hyperband
            # continues trials from their checkpoints).
            distiller.optimizer.build(distiller.student.trainable_variables)
        return distiller

    def _make_optimizer(self, learning_rate):
        if callable(self.optimizer):
            return self.optimizer(learning_rate)
        return keras.optimizers.get(
            {"class_name": self.optimizer, "config": {"learning_rate": learning_rate}}
        )

    # ------------------------------------------------------------------ #
    # Training a trial
    # ------------------------------------------------------------------ #
    def fit(
        self,
        hp,
        model,
        x=None,
        y=None,
        *,
        validation_data=None,
        validation_split=0.0,
        batch_size=None,
        sample_weight=None,
        callbacks=None,
        **kwargs,
    ):
        """Trains one trial's Distiller, the teacher's outputs cached.

        Takes `Model.fit`'s arguments, as passed to `tuner.search()`. With
        `cache=True`, `x`/`y` (and `sample_weight`) and `validation_data`
        are replaced by cached datasets, computed on the first trial and
        reused by every later one; array inputs are batched with
        `batch_size` (default 32), and `validation_split` is applied to
        arrays before caching (the last fraction, as Keras does).

        Args:
            hp: The trial's `keras_tuner.HyperParameters`.
            model: The Distiller `build(hp)` returned.
            x, y, validation_data, validation_split, batch_size,
                sample_weight, callbacks, **kwargs: As in `Model.fit`.

        Returns:
            The `keras.callbacks.History` of the trial.

        Raises:
            keras_tuner.errors.FatalValueError: (stopping the search) if the
                tuner has no objective, or if no log carries it (at the end
                of the first epoch, listing the available names).
            ValueError: for data the cache cannot hold (see `cache`).
        """
        callbacks = list(callbacks or [])
        objective = _find_objective(callbacks)
        if objective is not None and _is_default_objective(objective):
            raise keras_tuner.errors.FatalValueError(
                "Expected the tuner to have an objective among the "
                "Distiller's logs, e.g. `objective=keras_kd.tuning."
                "DEFAULT_OBJECTIVE` (the student's validation accuracy) or "
                "`objective='val_loss'`. Received: objective=None"
            )
        if self.cache:
            if kwargs.get("class_weight") is not None:
                raise ValueError(
                    "`class_weight` does not apply to cached teacher outputs "
                    "(their targets are a dict). Pass per-example weights as "
                    "`sample_weight=` (array inputs) or in the dataset, or "
                    "`DistillerHyperModel(cache=False)`. Received: "
                    f"class_weight={kwargs['class_weight']!r}"
                )
            if validation_split:
                x, y, sample_weight, validation_data = _split_arrays(
                    x, y, sample_weight, validation_split, validation_data
                )
                validation_split = 0.0
            shuffle = kwargs.pop("shuffle", True)
            kwargs["shuffle"] = False  # The cached data shuffle themselves.
            if validation_data is not None:
                validation_data = self._cached_data(
                    "validation",
                    *_unpack_validation(validation_data),
                    kwargs.pop("validation_batch_size", None) or batch_size,
                    shuffle=False,
                )
            x = self._cached_data(
                "train", x, y, sample_weight, batch_size, shuffle=shuffle
            )
            y = sample_weight = batch_size = None
        names = _objective_names(objective)
        if names:
            has_validation = validation_data is not None or bool(validation_split)
            callbacks.insert(0, _ObjectiveCheck(names, has_validation))
        fit_kwargs = dict(kwargs)
        if not self.cache:
            fit_kwargs.update(
                y=y, batch_size=batch_size, sample_weight=sample_weight,
                validation_split=validation_split,
            )
        return model.fit(
            x, validation_data=validation_data, callbacks=callbacks, **fit_kwargs
        )

    def _cached_data(self, role, x, y, sample_weight, batch_size, *, shuffle):
        """The cached form of one dataset, computed once per data objects."""
        if x is None:
            raise ValueError(
                "Expected training data: pass `x` (and `y`) to "
                "`tuner.search()`. Received: x=None"
            )
        if isinstance(x, tf.data.Dataset) and _is_cached_dataset(x):
            dataset = x  # Already from `cache_teacher_outputs`.
        else:
            key = (role, id(x), id(y), id(sample_weight), batch_size)
            entry = self._cached.get(key)
            sources = (x, y, sample_weight)
            if entry is None or any(a is not b for a, b in zip(entry, sources)):
                source, size = _cacheable(x, y, sample_weight, batch_size)
                dataset = kd_cache.cache_teacher_outputs(
                    self.teacher,
                    source,
                    batch_size=size,
                    shuffle=False,
                    teacher_outputs=self.distiller_kwargs.get(
                        "teacher_outputs", "auto"
                    ),
                )
                self.teacher_passes += 1
                # Keep the sources alive, so that their ids stay theirs.
                entry = (x, y, sample_weight, dataset)
                self._cached[key] = entry
            dataset = entry[3]
        if role == "train" and shuffle:
            dataset = _reshuffled(dataset, self.seed)
        return dataset

    def clear_cache(self):
        """Forgets the cached teacher outputs (e.g. before new data)."""
        self._cached.clear()


def _fresh_metric(metric):
    """A new instance of a metric object, so that trials share no state."""
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return metric


def _is_cached_dataset(dataset):
    spec = dataset.element_spec
    return (
        isinstance(spec, tuple)
        and len(spec) >= 2
        and kd_cache.is_cached_batch(spec[1])
    )


def _unpack_validation(validation_data):
    if isinstance(validation_data, tf.data.Dataset):
        return validation_data, None, None
    if isinstance(validation_data, (list, tuple)) and len(validation_data) in (2, 3):
        x, y, *rest = validation_data
        return x, y, rest[0] if rest else None
    raise ValueError(
        "Expected `validation_data` to be a `tf.data.Dataset`, `(x, y)` or "
        "`(x, y, sample_weight)`. Received: validation_data of type "
        f"{type(validation_data).__name__}"
    )


def _is_array(value):
    return isinstance(value, (np.ndarray, tf.Tensor))


def _split_arrays(x, y, sample_weight, validation_split, validation_data):
    """Keras' `validation_split` on arrays: the last fraction validates."""
    if validation_data is not None or not _is_array(x):
        raise ValueError(
            "Expected `validation_split` with array inputs and no "
            "`validation_data` (as in `Model.fit`). Received: "
            f"validation_split={validation_split!r} with x of type "
            f"{type(x).__name__}"
        )
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))

    def cut(a):
        return (None, None) if a is None else (a[:split_at], a[split_at:])

    (x, x_val), (y, y_val), (w, w_val) = cut(x), cut(y), cut(sample_weight)
    validation = (x_val, y_val) if w_val is None else (x_val, y_val, w_val)
    return x, y, w, validation


def _cacheable(x, y, sample_weight, batch_size):
    """`(dataset or array, batch_size)` that `cache_teacher_outputs` takes."""
    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "Pass `y` and `sample_weight` only with array inputs; a "
                "dataset carries its own. Received: a dataset with "
                f"y={type(y).__name__}, "
                f"sample_weight={type(sample_weight).__name__}"
            )
        first = next(iter(x.take(1)), None)
        if first is None:
            raise ValueError(
                "Expected a dataset with at least one batch. Received: an "
                "empty dataset"
            )
        inputs = keras.utils.unpack_x_y_sample_weight(first)[0]
        return x, int(tf.nest.flatten(inputs)[0].shape[0])
    if not _is_array(x):
        raise ValueError(
            "With `cache=True` the data must be NumPy arrays, tensors or a "
            "fixed `tf.data.Dataset`; pass `cache=False` to "
            "`DistillerHyperModel` for other inputs. Received: x of type "
            f"{type(x).__name__}"
        )
    batch_size = batch_size or 32
    if sample_weight is None:
        return (x if y is None else _batched((x, y), batch_size)), batch_size
    if y is None:
        raise ValueError(
            "Expected labels `y` with `sample_weight`. Received: y=None"
        )
    return _batched((x, y, sample_weight), batch_size), batch_size


def _batched(arrays, batch_size):
    return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)


def _reshuffled(cached, seed):
    """A freshly seeded shuffle of a cached dataset, for one trial.

    Each trial gets a new shuffle (same seed, same batch order in every
    trial) instead of continuing one shared shuffle sequence.
    """
    batches = int(cached.cardinality())
    for batch in cached.take(1):
        batch_size = int(tf.nest.flatten(batch)[0].shape[0])
    buffer = min(max(batches, 1) * batch_size, _SHUFFLE_BUFFER)
    shuffled = (
        cached.unbatch()
        .shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    if batches > 0:
        shuffled = shuffled.apply(tf.data.experimental.assert_cardinality(batches))
    return shuffled


# ---------------------------------------------------------------------- #
# Tuners and results
# ---------------------------------------------------------------------- #
class _OptionalTensorBoard:
    """Imports TensorBoard only for a search that uses its callback.

    keras-tuner (<= 1.4.8) imports `tensorboard` at every trial under the
    TensorFlow backend, even with no `TensorBoard` callback; TensorFlow >=
    2.21 no longer installs it. Tuners from `build_tuner` skip that step
    when no callback needs it.
    """

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        if any(
            callback.__class__.__name__ == "TensorBoard" for callback in callbacks
        ):
            super()._configure_tensorboard_dir(callbacks, trial, execution)


class _RandomSearch(_OptionalTensorBoard, keras_tuner.RandomSearch):
    pass


class _BayesianOptimization(_OptionalTensorBoard, keras_tuner.BayesianOptimization):
    pass


class _Hyperband(_OptionalTensorBoard, keras_tuner.Hyperband):
    pass


def build_tuner(
    hypermodel,
    kind="random",
    *,
    max_trials=10,
    max_epochs=None,
    objective=DEFAULT_OBJECTIVE,
    directory="tuning",
    project_name="search",
    overwrite=False,
    seed=0,
    **kwargs,
):
    """Creates a keras-tuner tuner for a `DistillerHyperModel`.

    A convenience over the keras-tuner classes, with the student's
    validation accuracy as the default objective. Any keras-tuner tuner
    works with `DistillerHyperModel` directly too.

    Args:
        hypermodel: A `DistillerHyperModel` (or any `keras_tuner.HyperModel`).
        kind: `"random"` (`RandomSearch`), `"bayesian"`
            (`BayesianOptimization`) or `"hyperband"` (`Hyperband`).
        max_trials: Number of trials (random and bayesian). Hyperband's
            number of trials follows from `max_epochs` and its `factor`.
        max_epochs: Hyperband's largest number of epochs of a trial
            (required for `"hyperband"`, unused otherwise).
        objective: A `keras_tuner.Objective`, or the name of a log (its
            direction inferred by keras-tuner). Defaults to
            `DEFAULT_OBJECTIVE`, `val_accuracy` to maximise.
        directory: Folder of the tuner's project.
        project_name: Name of the project folder inside `directory`.
        overwrite: keras-tuner's: `False` (the default) reloads an existing
            project of that name and continues it (a finished search then
            runs no new trial); `True` deletes it first.
        seed: Seed of the tuner's sampling. keras-tuner reads 0 as "no
            seed", so seed `s` is passed to keras-tuner as `s + 1`.
        **kwargs: Other arguments of the keras-tuner class.

    Returns:
        A `keras_tuner.RandomSearch`, `BayesianOptimization` or
        `Hyperband`. Unlike keras-tuner's own, it imports `tensorboard`
        only when a `TensorBoard` callback is passed to `search` (keras-tuner
        1.4.8 imports it at every trial under TensorFlow, which TensorFlow
        2.21 no longer installs).

    Raises:
        ValueError: for an unknown `kind`, or a hyperband tuner without
            `max_epochs`.

    Example:

    >>> tuner = keras_kd.tuning.build_tuner(hypermodel, "bayesian",
    ...                                     max_trials=12, directory="tune")
    """
    if kind not in TUNERS:
        raise ValueError(f"Expected `kind` to be one of {TUNERS}. Received: kind={kind!r}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected `seed` to be an int >= 0. Received: seed={seed!r}")
    common = dict(
        objective=objective,
        directory=os.fspath(directory),
        project_name=project_name,
        overwrite=overwrite,
        seed=int(seed) + 1,
        **kwargs,
    )
    if kind == "hyperband":
        if not isinstance(max_epochs, numbers.Integral) or max_epochs < 1:
            raise ValueError(
                "Expected `max_epochs`, a positive int, for a hyperband "
                f"tuner. Received: max_epochs={max_epochs!r}"
            )
        return _Hyperband(hypermodel, max_epochs=int(max_epochs), **common)
    if not isinstance(max_trials, numbers.Integral) or max_trials < 1:
        raise ValueError(
            f"Expected `max_trials` to be a positive int. Received: max_trials={max_trials!r}"
        )
    tuner_class = _RandomSearch if kind == "random" else _BayesianOptimization
    return tuner_class(hypermodel, max_trials=int(max_trials), **common)


def trial_records(tuner):
    """Every trial of a tuner as plain data, in trial order.

    Args:
        tuner: A `keras_tuner.Tuner` after (or during) `search`.

    Returns:
        A list of dicts: `trial_id`, `status`, `hyperparameters` (the active
        values; keras-tuner's own `tuner/...` entries under `tuner`),
        `objective` (the trial's score: its best epoch's objective, or
        `None`) and `best_epoch` (0-based).
    """
    records = []
    for trial_id in sorted(tuner.oracle.trials, key=_trial_order):
        trial = tuner.oracle.trials[trial_id]
        values = dict(trial.hyperparameters.values)
        records.append(
            {
                "trial_id": trial.trial_id,
                "status": str(trial.status),
                "hyperparameters": {
                    k: _plain(v) for k, v in values.items() if not k.startswith("tuner/")
                },
                "tuner": {k: _plain(v) for k, v in values.items() if k.startswith("tuner/")},
                "objective": None if trial.score is None else float(trial.score),
                "best_epoch": None if trial.best_step is None else int(trial.best_step),
            }
        )
    return records


def _trial_order(trial_id):
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _best_trial(tuner):
    completed = [
        t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"
    ]
    if not completed:
        raise ValueError(
            "Expected a tuner with at least one completed trial; run "
            "`tuner.search(...)` first. Received: a tuner with "
            f"{len(tuner.oracle.trials)} trial(s), none completed"
        )
    return tuner.oracle.get_best_trials(1)[0]


def save_best_student(tuner, path):
    """Saves the best trial's student alone, with its hyperparameters.

    Writes the student (the weights of the trial's best epoch, as
    `tuner.get_best_models()` loads them) to `path`, and the trial's
    hyperparameter values, objective and trial id to a JSON file next to
    it (`best_student.keras` -> `best_student.hyperparameters.json`).
    Files replaced are named on stderr.

    Args:
        tuner: A keras-tuner tuner whose hypermodel builds `Distiller`s,
            after `search`.
        path: Destination `.keras` path of the student.

    Returns:
        The best student, a `keras.Model` ready to predict.

    Raises:
        ValueError: if `path` is not a `.keras` path or no trial completed.

    Example:

    >>> student = keras_kd.tuning.save_best_student(tuner, "best_student.keras")
    >>> student.predict(x[:8])
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(
            "Expected `path` to be a `.keras` file path. Received: "
            f"path={path!r}"
        )
    trial = _best_trial(tuner)
    model = tuner.load_model(trial)
    student = model.student if isinstance(model, Distiller) else model
    _files.save_model(student, path)
    record = next(r for r in trial_records(tuner) if r["trial_id"] == trial.trial_id)
    objective = tuner.oracle.objective
    record["objective"] = {
        "name": objective.name,
        "direction": objective.direction,
        "value": record["objective"],
    }
    record.pop("status")
    _files.write_text(
        _hyperparameters_path(path), json.dumps(record, indent=2) + "\n"
    )
    return student


def _hyperparameters_path(path):
    return path[: -len(".keras")] + ".hyperparameters.json"


# ---------------------------------------------------------------------- #
# The ready-made search behind `keras-kd tune`
# ---------------------------------------------------------------------- #
class _KeepBestEpoch(keras.callbacks.Callback):
    """Keeps the student's weights of the best epoch (as the tuner does)."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective
        self.best = None
        self.best_epoch = None
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = self.objective.get_value(logs or {})
        if self.best is None or self.objective.better_than(value, self.best):
            self.best, self.best_epoch = float(value), epoch
            self.weights = self.model.student.get_weights()


def run_search(
    output_dir="saved_models/tune",
    *,
    dataset="mnist1d",
    teacher=None,
    tuner="random",
    trials=12,
    epochs=15,
    temperature=DEFAULT_TEMPERATURE_RANGE,
    alpha=DEFAULT_ALPHA_RANGE,
    learning_rate=2e-3,
    batch_size=64,
    validation_fraction=0.2,
    train_size=None,
    transfer=False,
    transfer_size=None,
    distill_batch_size=256,
    teacher_epochs=40,
    compare_default=True,
    resume=False,
    data_dir=None,
    seed=0,
    verbose="auto",
):
    """Searches temperature and alpha for the reference MLP student; reports.

    1. Splits the labelled `train` split: the last `validation_fraction`
       validates (the objective, `val_accuracy`), the rest trains. The
       `test` split is only measured at the end, never used to choose.
    2. Loads the teacher (`teacher`, a `.keras` path or a model), reuses
       `output_dir/teacher.keras`, or trains `keras_kd.models.cnn_teacher`
       on `train` and saves it there.
    3. Runs the tuner over `DistillerHyperModel` (reference MLP student,
       Adam with a cosine-decayed learning rate, `seed` for every trial):
       the teacher runs once over the training and the validation data.
    4. Trains the same student with the library's default temperature and
       alpha on the same data, epochs and seed (the weights of its best
       validation epoch, as the tuner keeps), for comparison.
    5. Prints a table of the trials and the best, and writes to
       `output_dir`: `best_student.keras` (+ `.hyperparameters.json`),
       `results.json` (every trial, the best, the default, test
       accuracies), `objective.png` (the objective over (T, alpha)), and
       the tuner's project folder `tuner/`.

    By default the student trains on labelled data, where alpha acts. With
    `transfer=True` it trains as the demo does, by pure distillation on the
    inputs of the training part plus the dataset's unlabelled split
    (MNIST-1D's 25,000 `transfer` examples) in batches of
    `distill_batch_size`; alpha then has no effect and only the
    temperature is searched.

    A new run replaces the earlier search in `output_dir/tuner/` (saying so
    on stderr); `resume=True` continues it instead (keras-tuner's
    `overwrite=False`), e.g. after an interruption.

    Args:
        output_dir: Folder of the outputs.
        dataset: A TFDS classification dataset name (`keras_kd.datasets`).
        teacher: `None`, a `.keras` path, or a trained `keras.Model`.
        tuner: `"random"`, `"bayesian"` or `"hyperband"`.
        trials: Number of trials (random, bayesian; hyperband's follows
            from `epochs`).
        epochs: Epochs of each trial (hyperband: the most epochs of one).
        temperature: Range of T, searched on a log scale.
        alpha: Range of alpha.
        learning_rate: Initial learning rate (cosine-decayed over
            `epochs`).
        batch_size: Training batch size.
        validation_fraction: Share of `train` held out for validation.
        train_size: Use only the first `train_size` examples of `train`
            (quick runs); `None` uses all.
        transfer: Train on unlabelled inputs (see above).
        transfer_size: Use only the first `transfer_size` unlabelled
            examples (quick runs); `None` uses all.
        distill_batch_size: Batch size with `transfer=True`.
        teacher_epochs: Epochs of the teacher, when one is trained.
        compare_default: Whether to train the default-T/alpha student.
        resume: Continue the search in `output_dir/tuner/`.
        data_dir: TFDS data directory.
        seed: Seed of the tuner, the weights and the shuffling.
        verbose: `"auto"`, 0, 1 or 2, as in `Model.fit`.

    Returns:
        The report dict written to `results.json`.

    Raises:
        ValueError: for arguments out of range or an unusable teacher file,
            before any training.
    """
    start = time.perf_counter()
    if tuner not in TUNERS:
        raise ValueError(f"Expected `tuner` to be one of {TUNERS}. Received: tuner={tuner!r}")
    for name, value in (("trials", trials), ("epochs", epochs),
                        ("teacher_epochs", teacher_epochs)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(
                f"Expected `{name}` to be a positive int. Received: {name}={value!r}"
            )
    if not _is_number(validation_fraction) or not 0 < validation_fraction < 1:
        raise ValueError(
            "Expected `validation_fraction` to be a number in (0, 1). "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    _check_range(TEMPERATURE, temperature, 0.0, math.inf, log=True)
    _check_range(ALPHA, alpha, 0.0, 1.0, log=False)
    _check_range(LEARNING_RATE, learning_rate, 0.0, math.inf, log=True)
    if isinstance(teacher, (str, os.PathLike)):
        teacher = _files.load_model(teacher, argument="teacher")
    verbose = training.resolve_verbose(verbose)

    keras.utils.set_random_seed(seed)
    data, splits = _load_split(dataset, train_size, validation_fraction,
                               batch_size, data_dir, seed)
    # Fixed arrays: the hypermodel caches the teacher's outputs on them once.
    train, validation = (_as_arrays(data[s]) for s in splits[:2])
    test = data[splits[2]]
    if transfer:
        unlabelled = _unlabelled_inputs(dataset, transfer_size, data_dir, seed)
        train = (np.concatenate([train[0], unlabelled]),)
        if not isinstance(alpha, numbers.Real):
            _files.say("unlabelled training data: alpha has no effect and is "
                       "not searched")
        alpha = DEFAULT_ALPHA
    teacher, teacher_reused = _teacher(
        teacher, output_dir, dataset, data_dir, batch_size, train_size,
        teacher_epochs, seed, verbose,
    )

    batch_size = distill_batch_size if transfer else batch_size
    steps = math.ceil(len(train[0]) / batch_size)

    def optimizer(rate):
        return keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps * epochs)
        )

    hypermodel = DistillerHyperModel(
        lambda hp: models.mlp_student(data.input_shape, data.num_classes),
        teacher,
        temperature=temperature,
        alpha=alpha,
        learning_rate=learning_rate,
        optimizer=optimizer,
        seed=seed,
    )
    project = os.path.join(output_dir, "tuner")
    if os.path.exists(project):
        _files.say(
            f"{'resuming' if resume else 'replacing'} the earlier search in "
            f"{project}" + ("" if resume else " (--resume continues it)")
        )
    if tuner == "hyperband" and trials:
        _files.say("hyperband: the number of trials follows from --epochs "
                   "(max_epochs) and factor 3; --trials is not used")
    search = build_tuner(
        hypermodel, tuner, max_trials=trials, max_epochs=epochs,
        directory=output_dir, project_name="tuner", overwrite=not resume,
        seed=seed,
    )
    _files.say(f"searching {'T' if transfer else 'T and alpha'}: {tuner} tuner, "
               f"{'' if tuner == 'hyperband' else f'{trials} trials x '}"
               f"{epochs} epochs")
    search.search(*train, validation_data=validation, epochs=epochs,
                  batch_size=batch_size, verbose=verbose)

    records = trial_records(search)
    best = _best_trial(search)
    student = save_best_student(search, os.path.join(output_dir, "best_student.keras"))
    best_record = next(r for r in records if r["trial_id"] == best.trial_id)
    report = {
        "dataset": dataset,
        "tuner": tuner,
        "objective": {"name": search.oracle.objective.name,
                      "direction": search.oracle.objective.direction},
        "trials": records,
        "best": dict(best_record, test_accuracy=measure.accuracy(student, test)),
    }
    if compare_default:
        report["default"] = _train_default(hypermodel, train, validation, test,
                                           epochs, batch_size,
                                           search.oracle.objective, verbose)
        if transfer:
            report["default"]["hyperparameters"].pop(ALPHA)
    report["teacher"] = {
        "test_accuracy": measure.accuracy(teacher, test),
        "params": teacher.count_params(),
        "reused": teacher_reused,
    }
    report["settings"] = {
        "epochs": epochs,
        "trials": len(records),
        "temperature_range": list(temperature) if isinstance(temperature, (list, tuple)) else temperature,
        "alpha_range": list(alpha) if isinstance(alpha, (list, tuple)) else alpha,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "train_examples": len(train[0]),
        "labelled": not transfer,
        "validation_examples": data.num_examples[splits[1]],
        "test_examples": data.num_examples[splits[2]],
        "student_params": student.count_params(),
        "teacher_passes": hypermodel.teacher_passes,
        "seed": seed,
        "resumed": bool(resume),
    }
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    _files.write_text(os.path.join(output_dir, "results.json"),
                      json.dumps(report, indent=2) + "\n")
    plot_objective(report, os.path.join(output_dir, "objective.png"))
    print(format_results(report))
    return report


def _load_split(dataset, train_size, validation_fraction, batch_size, data_dir, seed):
    """Loads `(train part, validation part, test)` of the labelled data."""
    probe = datasets.load(dataset, splits=("test",), batch_size=batch_size,
                          data_dir=data_dir, seed=seed)
    total = probe.info.splits["train"].num_examples
    size = total if train_size is None else min(int(train_size), total)
    n_val = max(1, int(round(size * validation_fraction)))
    if size - n_val < 1:
        raise ValueError(
            "Expected at least one training example after the validation "
            f"split. Received: train_size={train_size!r}, "
            f"validation_fraction={validation_fraction!r}"
        )
    splits = (f"train[:{size - n_val}]", f"train[{size - n_val}:{size}]", "test")
    data = datasets.load(dataset, splits=splits, batch_size=batch_size,
                         data_dir=data_dir, seed=seed, shuffle_train=False,
                         cache=False)
    return data, splits


def _unlabelled_inputs(dataset, size, data_dir, seed):
    """The inputs of the dataset's unlabelled splits, as one array."""
    probe = datasets.load(dataset, splits=("test",), data_dir=data_dir, seed=seed)
    names = [s for s in ("transfer", "unlabelled") if s in probe.info.splits]
    if not names:
        raise ValueError(
            "Expected a dataset with an unlabelled split ('transfer' or "
            f"'unlabelled') for `transfer=True`. Received: dataset={dataset!r}"
            f" with splits {sorted(probe.info.splits)}"
        )
    spec = "+".join(names)
    if size is not None:
        spec = f"{spec}[:{int(size)}]" if len(names) == 1 else spec
    data = datasets.load(dataset, splits=(spec,), batch_size=1024,
                         data_dir=data_dir, seed=seed, shuffle_train=False,
                         cache=False)
    x = np.concatenate(list(data[spec].as_numpy_iterator()))
    return x if size is None else x[: int(size)]


def _as_arrays(dataset):
    """`(x, y)` NumPy arrays of a batched, unshuffled `(x, y)` dataset."""
    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _teacher(teacher, output_dir, dataset, data_dir, batch_size, train_size,
             epochs, seed, verbose):
    """`(teacher, reused)`: the given one, the saved one, or a new one."""
    if teacher is not None:
        return teacher, True
    path = os.path.join(output_dir, "teacher.keras")
    if os.path.exists(path):
        _files.say(f"reusing the teacher in {path} (delete it to retrain)")
        return _files.load_model(path, argument="teacher"), True
    split = "train" if train_size is None else f"train[:{int(train_size)}]"
    _files.say(f"training the teacher on {dataset} {split} ({epochs} epochs)")
    data = datasets.load(dataset, splits=(split,), batch_size=batch_size,
                         data_dir=data_dir, seed=seed)
    keras.utils.set_random_seed(seed)
    teacher, _ = training.train_teacher(data, split=split, epochs=epochs,
                                        verbose=verbose)
    _files.save_model(teacher, path)
    return teacher, False


def _train_default(hypermodel, train, validation, test, epochs, batch_size,
                   objective, verbose):
    """The student with the library's default T and alpha, trained alike."""
    hp = keras_tuner.HyperParameters()
    hp.Fixed(TEMPERATURE, DEFAULT_TEMPERATURE)
    hp.Fixed(ALPHA, DEFAULT_ALPHA)
    _files.say(f"training the student with the default T={DEFAULT_TEMPERATURE:g}, "
               f"alpha={DEFAULT_ALPHA:g} for comparison")
    distiller = hypermodel.build(hp)
    keep = _KeepBestEpoch(objective)
    hypermodel.fit(hp, distiller, *train, validation_data=validation,
                   epochs=epochs, batch_size=batch_size, callbacks=[keep],
                   verbose=verbose)
    distiller.student.set_weights(keep.weights)
    return {
        "hyperparameters": {TEMPERATURE: DEFAULT_TEMPERATURE, ALPHA: DEFAULT_ALPHA},
        "objective": keep.best,
        "best_epoch": keep.best_epoch,
        "test_accuracy": measure.accuracy(distiller.student, test),
    }


def _value_text(value, spec="{:.3g}"):
    return "-" if value is None else spec.format(value)


def format_results(report):
    """The trials table and the best, as printed by `run_search`."""
    name = report["objective"]["name"]
    lines = [f"{'trial':>5}  {'T':>6}  {'alpha':>6}  {name:>12}"]
    best_id = report["best"]["trial_id"]
    for record in report["trials"]:
        hps = record["hyperparameters"]
        mark = "  <- best" if record["trial_id"] == best_id else ""
        lines.append(
            f"{record['trial_id']:>5}  {_value_text(hps.get(TEMPERATURE)):>6}  "
            f"{_value_text(hps.get(ALPHA), '{:.2f}'):>6}  "
            f"{_value_text(record['objective'], '{:.4f}'):>12}{mark}"
        )
    best = report["best"]
    hps = best["hyperparameters"]
    alpha_text = f", alpha={hps[ALPHA]:.2f}" if ALPHA in hps else ""
    lines.append(
        f"best: T={_value_text(hps.get(TEMPERATURE))}{alpha_text}: {name} "
        f"{best['objective']:.4f}, test accuracy {best['test_accuracy']:.4f}"
    )
    default = report.get("default")
    if default:
        hps = default["hyperparameters"]
        alpha_text = f", alpha={hps[ALPHA]:g}" if ALPHA in hps else ""
        lines.append(
            f"default: T={hps[TEMPERATURE]:g}{alpha_text}: {name} "
            f"{default['objective']:.4f}, test accuracy "
            f"{default['test_accuracy']:.4f}"
        )
    settings = report.get("settings", {})
    if "teacher_passes" in settings:
        lines.append(
            f"teacher passes over the data: {settings['teacher_passes']} "
            f"for {settings['trials']} trials of up to {settings['epochs']} epochs"
        )
    return "\n".join(lines)


def plot_objective(report, path):
    """Draws every trial's objective over (T, alpha); marks the best.

    When alpha was not searched, the objective is drawn over T alone.
    Trials without a temperature (logit matching) are left out of the plot.

    Args:
        report: A `run_search` report (or any dict with its `trials`,
            `best`, `objective` and optional `default`).
        path: Destination `.png` path; a replaced file is named on stderr.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    name = report["objective"]["name"]
    done = [r for r in report["trials"]
            if r["objective"] is not None and TEMPERATURE in r["hyperparameters"]]
    two_d = any(ALPHA in r["hyperparameters"] for r in done)
    settings = report.get("settings", {})

    def position(hps):
        return hps[TEMPERATURE], (hps.get(ALPHA) if two_d else None)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if done:
        t = np.asarray([r["hyperparameters"][TEMPERATURE] for r in done], float)
        v = np.asarray([r["objective"] for r in done], float)
        if two_d:
            a = np.asarray([r["hyperparameters"].get(ALPHA, np.nan) for r in done], float)
            scatter = ax.scatter(t, a, c=v, cmap="viridis", s=60, edgecolors="k")
            fig.colorbar(scatter, ax=ax, label=name)
        else:
            ax.scatter(t, v, s=60, edgecolors="k", label="trials")
    best = report["best"]
    if TEMPERATURE in best["hyperparameters"]:
        t_best, a_best = position(best["hyperparameters"])
        ax.scatter([t_best], [a_best if two_d else best["objective"]], marker="*",
                   s=300, facecolors="none", edgecolors="red", linewidths=1.5,
                   label=f"best ({name} {best['objective']:.3f})")
    default = report.get("default")
    if default:
        t_def, a_def = position(default["hyperparameters"])
        ax.scatter([t_def], [a_def if two_d else default["objective"]], marker="x",
                   s=100, color="red",
                   label=f"default ({name} {default['objective']:.3f})")
    ax.set_xscale("log")
    t_range = settings.get("temperature_range")
    if isinstance(t_range, list):
        ax.set_xlim(t_range[0] / 1.15, t_range[1] * 1.15)
    a_range = settings.get("alpha_range")
    if two_d and isinstance(a_range, list):
        ax.set_ylim(a_range[0] - 0.04, a_range[1] + 0.04)
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("alpha (weight of the hard-label loss)" if two_d else name)
    ax.set_title(f"{report.get('tuner', '')} search: {name} per trial")
    ax.legend(loc="best")
    fig.tight_layout()
    path = os.fspath(path)
    if os.path.exists(path):
        _files.say(f"replacing {path}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
