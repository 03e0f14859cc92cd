"""Ready-made training runs: a teacher, a student from scratch, a distillation.

These are the functions the `keras-kd` command line and the tutorials call.
Each is a few lines of ordinary Keras around `keras_kd.Distiller`; copy one
when you need more control.
"""

import json
import os
import shutil
import sys

import keras

from keras_kd import _files
from keras_kd import models
from keras_kd.cache import cache_teacher_outputs
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
    callbacks=None,
    verbose="auto",
):
    """Trains the reference CNN teacher (`keras_kd.models.cnn_teacher`).

    Args:
        data: A `keras_kd.datasets.DatasetSplits` holding `split`.
        split: The split spec to train on. Defaults to `"train"`.
        epochs: Number of epochs.
        learning_rate: Initial learning rate (cosine-decayed).
        validation_data: Optional `(x, y)` dataset evaluated each epoch.
        callbacks: Optional Keras callbacks, e.g. `backup(...)`.
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
        callbacks=callbacks,
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
    cache=False,
    seed=0,
):
    """Distils `teacher` into `student` on a transfer set.

    With `cache=True` the teacher runs once over `transfer` (and
    `validation_data`) before training, through
    `keras_kd.cache_teacher_outputs`, instead of on every batch of every
    epoch; the cached examples are reshuffled each epoch (seeded by
    `seed`), where `cache=False` trains on `transfer` in its own order. On
    the same batches both give the same losses; cached epochs are several
    times faster (`benchmarks/`). It
    needs fixed data: `transfer` unshuffled and not augmented (refused
    otherwise, before training). The command line caches by default, since
    its pipelines are fixed (`--no-cache` turns it off).

    Args:
        teacher: The trained teacher `keras.Model`, or a list of them.
        student: The student `keras.Model` (logits output).
        transfer: A batched `tf.data.Dataset` of `x` only (pure
            distillation) or of `(x, y)`; unshuffled with `cache=True`.
        epochs: Number of epochs.
        temperature: Softmax temperature of the soft targets.
        alpha: Weight of the hard-label loss (used when labels exist).
        learning_rate: Initial learning rate of Adam (cosine-decayed).
        validation_data: Optional labelled `(x, y)` dataset.
        callbacks: Optional Keras callbacks.
        verbose: `"auto"`, 0, 1 or 2.
        cache: Whether to run the teacher once over the fixed data
            (above) rather than on every batch.
        seed: Seed of the cached transfer set's reshuffling.

    Returns:
        `(distiller, history)`; `distiller.student` is the trained student.

    Raises:
        ValueError: with `cache=True`, if `transfer` is shuffled or
            randomly augmented, before any training.
    """
    distiller = Distiller(
        student, teacher, temperature=temperature, alpha=alpha
    )
    if cache:
        transfer, validation_data = cache_outputs(
            teacher, transfer, validation_data, seed=seed
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


def cache_outputs(teacher, transfer, validation_data=None, *, seed=0):
    """`(transfer, validation_data)` with the teacher's outputs cached.

    Both keep their batch size; the transfer set is reshuffled each epoch
    (seeded by `seed`), the validation data keeps its order. Either may be
    `None`. The validation data is cached first (it is usually the
    smaller), and an error names the argument it is about.
    """
    if validation_data is not None:
        validation_data = _cached(
            teacher, validation_data, "validation_data", shuffle=False
        )
    if transfer is not None:
        transfer = _cached(teacher, transfer, "transfer", seed=seed)
    return transfer, validation_data


def _cached(teacher, data, argument, **kwargs):
    arrays = {}
    if isinstance(data, (list, tuple)):  # `(x, y[, sample_weight])` arrays
        data, *rest = data
        arrays = dict(zip(("y", "sample_weight"), rest))
    try:
        return cache_teacher_outputs(teacher, data, **arrays, **kwargs)
    except ValueError as error:
        message = str(error).replace("`x`", f"`{argument}`")
        raise ValueError(
            message.replace("Received: x=", f"Received: {argument}=")
        ) from None


BACKUP_FOLDER = ".backup"


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that says when it resumes a run.

    Backs the training state (weights, optimizer, epoch) up to `backup_dir`
    at the end of every epoch. A `fit` that finds a backup of an unfinished
    run resumes from it, saying so on stderr; a run that finishes deletes
    its backup, and the `.backup` folder above it once empty.

    With `resume=False` an earlier backup is deleted first (with a notice),
    so the run starts over.

    Resuming continues the same optimizer and learning-rate schedule from
    the last finished epoch. A `tf.data` pipeline that reshuffles each epoch
    starts its shuffling over in the new process, so the remaining epochs
    see other orders than an uninterrupted run would (with a fixed order
    the result is the same, see the README).

    Args:
        backup_dir: Folder of this run's backup, used by no other run.
        resume: Whether to resume from a backup found there. Defaults to
            `True`.
        description: What trains, for messages, e.g. `"the distillation"`.
        **kwargs: Other arguments of `keras.callbacks.BackupAndRestore`.

    Raises:
        ValueError: at the start of `fit`, if the backup does not match the
            model (e.g. another architecture); it names the folder.

    Example:

    >>> backup = keras_kd.training.ResumableBackup("out/.backup/distill")
    >>> distiller.fit(data, epochs=40, callbacks=[backup])
    """

    def __init__(self, backup_dir, *, resume=True, description="training",
                 **kwargs):
        backup_dir = os.fspath(backup_dir)
        super().__init__(backup_dir, **kwargs)
        self.description = description
        if not resume and os.path.exists(backup_dir):
            _files.say(
                f"starting {description} over: deleting the backup of an "
                f"unfinished run in {backup_dir}"
            )
            shutil.rmtree(backup_dir)

    def on_train_begin(self, logs=None):
        epoch = _backed_up_epoch(
            os.path.join(self.backup_dir, "training_metadata.json")
        )
        if epoch is not None:
            epochs = (self.params or {}).get("epochs", "?")
            _files.say(
                f"resuming {self.description} after epoch {epoch} of "
                f"{epochs} from the backup in {self.backup_dir} (pass "
                "--no-resume, or resume=False, to start over)"
            )
        try:
            super().on_train_begin(logs)
        except (ValueError, OSError, KeyError) as error:
            reason = str(error).strip().splitlines()[0] if str(error) else ""
            raise ValueError(
                f"Could not resume {self.description} from the backup in "
                f"{self.backup_dir}: it does not match this run "
                f"({type(error).__name__}: {reason[:200]}). Delete the folder "
                "or start over with --no-resume (resume=False). Received: "
                f"backup_dir={self.backup_dir!r}"
            ) from None

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        parent = os.path.dirname(os.path.abspath(self.backup_dir))
        if os.path.basename(parent) == BACKUP_FOLDER:
            try:
                os.rmdir(parent)  # Only when empty.
            except OSError:
                pass


def _backed_up_epoch(metadata_path):
    """The number of finished epochs a backup holds, or None if none."""
    try:
        with open(metadata_path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def backup(output_dir, name, *, resume=True, description=None):
    """A `ResumableBackup` in `output_dir/.backup/name`, as a callbacks list.

    The `keras-kd` commands and the demos give each training run one, so
    that a run killed mid-way resumes when the command is run again.

    Args:
        output_dir: The run's output folder.
        name: The run's name in it, e.g. `"distill"`.
        resume: Whether to resume from an unfinished run's backup.
        description: What trains, for messages. Defaults to `name`.

    Returns:
        A list holding the callback, for `callbacks=`.
    """
    return [
        ResumableBackup(
            os.path.join(output_dir, BACKUP_FOLDER, name),
            resume=resume,
            description=description or name,
        )
    ]
