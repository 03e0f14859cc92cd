"""Ready-made training runs: a teacher, a student from scratch, a distillation.

These are the functions the `keras-kd` command line and the tutorials call.
Each is a few lines of ordinary Keras around `keras_kd.Distiller`; copy one
when you need more control.
"""

import sys

import keras

from keras_kd import models
from keras_kd.distiller import DEFAULT_ALPHA
from keras_kd.distiller import DEFAULT_TEMPERATURE
from keras_kd.distiller import Distiller


def resolve_verbose(verbose):
    """`"auto"` gives Keras progress bars on a terminal, one line per epoch
    otherwise (logs, CI)."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose


def cosine_adam(learning_rate, epochs, dataset):
    """Adam with a cosine-decayed learning rate over `epochs` of `dataset`.

    Falls back to a constant learning rate when the number of batches per
    epoch is unknown.

    Args:
        learning_rate: Initial learning rate.
        epochs: Number of epochs the schedule spans.
        dataset: The batched training `tf.data.Dataset`.

    Returns:
        A `keras.optimizers.Adam`.
    """
    steps = int(dataset.cardinality())
    if steps > 0:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=steps * epochs
        )
    return keras.optimizers.Adam(learning_rate)


def train_classifier(
    model,
    train,
    *,
    epochs,
    learning_rate=1e-3,
    validation_data=None,
    callbacks=None,
    verbose="auto",
):
    """Trains a logits classifier on labelled data with cross-entropy.

    Args:
        model: A `keras.Model` that outputs logits.
        train: A batched `tf.data.Dataset` of `(x, y)`.
        epochs: Number of epochs.
        learning_rate: Initial learning rate of Adam (cosine-decayed).
        validation_data: Optional `(x, y)` dataset evaluated each epoch.
        callbacks: Optional Keras callbacks.
        verbose: `"auto"`, 0, 1 or 2, as in `Model.fit`.

    Returns:
        The `keras.callbacks.History` of the run.
    """
    model.compile(
        optimizer=cosine_adam(learning_rate, epochs, train),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model.fit(
        train,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=resolve_verbose(verbose),
        shuffle=False,  # tf.data pipelines shuffle themselves.
    )


def train_teacher(
    data,
    *,
    split="train",
    epochs=40,
    learning_rate=3e-3,
    validation_data=None,
    verbose="auto",
):
    """Trains the reference CNN teacher (`keras_kd.models.cnn_teacher`).

    Args:
        data: A `keras_kd.datasets.DatasetSplits` holding `split`.
        split: The split spec to train on. Defaults to `"train"`.
        epochs: Number of epochs.
        learning_rate: Initial learning rate (cosine-decayed).
        validation_data: Optional `(x, y)` dataset evaluated each epoch.
        verbose: `"auto"`, 0, 1 or 2.

    Returns:
        `(teacher, history)`.
    """
    teacher = models.cnn_teacher(data.input_shape, data.num_classes)
    history = train_classifier(
        teacher,
        data[split],
        epochs=epochs,
        learning_rate=learning_rate,
        validation_data=validation_data,
        verbose=verbose,
    )
    return teacher, history


def distill(
    teacher,
    student,
    transfer,
    *,
    epochs=40,
    temperature=DEFAULT_TEMPERATURE,
    alpha=DEFAULT_ALPHA,
    learning_rate=2e-3,
    validation_data=None,
    callbacks=None,
    verbose="auto",
):
    """Distils `teacher` into `student` on a transfer set.

    Args:
        teacher: The trained teacher `keras.Model`.
        student: The student `keras.Model` (logits output).
        transfer: A batched `tf.data.Dataset` of `x` only (pure
            distillation) or of `(x, y)`.
        epochs: Number of epochs.
        temperature: Softmax temperature of the soft targets.
        alpha: Weight of the hard-label loss (used when labels exist).
        learning_rate: Initial learning rate of Adam (cosine-decayed).
        validation_data: Optional labelled `(x, y)` dataset.
        callbacks: Optional Keras callbacks.
        verbose: `"auto"`, 0, 1 or 2.

    Returns:
        `(distiller, history)`; `distiller.student` is the trained student.
    """
    distiller = Distiller(
        student, teacher, temperature=temperature, alpha=alpha
    )
    distiller.compile(
        optimizer=cosine_adam(learning_rate, epochs, transfer),
        metrics=["accuracy"],
    )
    history = distiller.fit(
        transfer,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=resolve_verbose(verbose),
        shuffle=False,  # tf.data pipelines shuffle themselves.
    )
    return distiller, history
