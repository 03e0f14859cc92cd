"""The demos: distil on MNIST-1D, measure, and report.

- `run_demo` (`keras-kd demo`, `make demo`): a CNN teacher into an MLP.
- `run_ensemble_demo` (`keras-kd demo --ensemble N`): N CNN teachers, as an
  ensemble, into the same MLP.
- `run_reverse_demo` (`keras-kd demo --reverse`): reverse distillation of
  the small MLP into the large CNN.

Everything they need is generated offline. Each writes its own folder.
"""

import json
import math
import os
import time

import keras
import tensorflow as tf

from keras_kd import _files
from keras_kd import datasets
from keras_kd import ensemble as kd_ensemble
from keras_kd import measure
from keras_kd import models
from keras_kd import training
from keras_kd.distiller import DEFAULT_ALPHA
from keras_kd.distiller import DEFAULT_TEMPERATURE
from keras_kd.distiller import Distiller
from keras_kd.distiller import resolve_defaults
from keras_kd.distiller import validate_alpha
from keras_kd.losses import validate_temperature

_ROWS = (
    ("teacher", "teacher (CNN)"),
    ("student_scratch", "student from scratch (MLP)"),
    ("student_distilled", "student distilled (MLP)"),
)
_REVERSE_ROWS = (
    ("teacher", "teacher: small MLP"),
    ("cnn_scratch", "CNN from scratch"),
    ("cnn_reverse", "CNN reverse-distilled"),
)


def gap_closed(teacher, scratch, distilled):
    """Share of the teacher-scratch accuracy gap that distillation closed.

    `(distilled - scratch) / (teacher - scratch)`; `None` (null in
    `report.json`) when the teacher is no better than the scratch student:
    there is no gap to close.
    """
    gap = teacher - scratch
    return (distilled - scratch) / gap if gap > 0 else None


def _gap_text(report, teacher):
    if report["gap_closed"] is None:
        return (
            f"the {teacher} is no better than the scratch student, so there "
            "is no gap to close (train it longer)."
        )
    return f"it closed {report['gap_closed']:.0%} of the {teacher}-scratch gap."


def _load_labelled(dataset, train_size, batch_size, data_dir, seed):
    """`(data, train_split)`: the train (maybe cut) and test pipelines."""
    train_split = "train" if train_size is None else f"train[:{int(train_size)}]"
    data = datasets.load(
        dataset,
        splits=(train_split, "test"),
        batch_size=batch_size,
        data_dir=data_dir,
        seed=seed,
    )
    return data, train_split


def _load_transfer(dataset, transfer_size, distill_batch_size, data_dir, seed,
                   shuffle=True):
    """The transfer set (inputs only), or `transfer_size` examples of it.

    A cut is drawn at random once (seeded) and keeps the same examples
    every epoch, reshuffled if `shuffle`, as the teacher-output cache does
    with them: with and without the cache, distillation sees the same
    examples in the same order. A cut no smaller than the set is the set.
    """
    def whole(shuffle):
        return datasets.transfer_set(
            dataset, batch_size=distill_batch_size, data_dir=data_dir,
            seed=seed, shuffle=shuffle,
        )

    if transfer_size is None:
        return whole(shuffle)
    fixed = whole(False)  # read once (it is held in memory)
    batches = int(fixed.cardinality())
    if batches < 0 or transfer_size > (batches - 1) * distill_batch_size:
        return whole(True) if shuffle else fixed
    subset = fixed.unbatch().shuffle(
        batches * distill_batch_size, seed=seed, reshuffle_each_iteration=False
    ).take(transfer_size)
    if shuffle:
        subset = subset.shuffle(
            transfer_size, seed=seed, reshuffle_each_iteration=True
        )
    steps = math.ceil(transfer_size / distill_batch_size)
    # A known number of batches, as before: the learning-rate schedule needs it.
    return subset.batch(distill_batch_size).apply(
        tf.data.experimental.assert_cardinality(steps)
    )


def _backup(output_dir, name, resume):
    """The callbacks that back a training run up in `output_dir/.backup/name`."""
    return training.backup(
        output_dir, name, resume=resume,
        description=f"the {name.replace('_', ' ')} training",
    )


def _reuse_or_train(path, histories, key, train, notice):
    """Loads the model at `path` if there, else trains (`train()` returns
    `(model, history)`), records the history under `key` and saves it."""
    if os.path.exists(path):
        _files.say(f"reusing the {key.replace('_', ' ')} in {path} "
                   "(delete it to retrain)")
        return _files.load_model(path, argument=key)
    _files.say(notice)
    model, histories[key] = train()
    _files.save_model(model, path)
    return model


def run_demo(
    output_dir="saved_models/demo",
    *,
    dataset="mnist1d",
    teacher_epochs=40,
    student_epochs=60,
    distill_epochs=40,
    temperature=DEFAULT_TEMPERATURE,
    alpha=DEFAULT_ALPHA,
    batch_size=64,
    distill_batch_size=256,
    train_size=None,
    transfer_size=None,
    data_dir=None,
    seed=0,
    verbose="auto",
    resume=True,
    cache=True,
):
    """Trains a teacher, a scratch student and a distilled student; reports.

    1. Trains `keras_kd.models.cnn_teacher` on the `train` split, or reuses
       `output_dir/teacher.keras` when it is there.
    2. Trains `keras_kd.models.mlp_student` from scratch on `train`.
    3. Distils the same MLP architecture from the teacher on the transfer
       set (`train` + the unlabelled `transfer` split, inputs only).
    4. Prints a table of params, file size, test accuracy and CPU latency,
       and the share of the teacher-scratch gap that distillation closed.
    5. Writes `teacher.keras`, `student.keras` (the distilled student
       alone), `report.json` and `learning_curves.png` to `output_dir`.

    Seeds are fixed, so a rerun gives the same numbers on the same machine.
    The test split is only measured (and drawn as the validation curve),
    never used to select anything.

    Args:
        output_dir: Folder for the outputs. Earlier files are replaced,
            with a notice.
        dataset: A dataset name for `keras_kd.datasets.load` with a
            `transfer_set`; defaults to the embedded `"mnist1d"`.
        teacher_epochs: Epochs of teacher training.
        student_epochs: Epochs of the scratch student.
        distill_epochs: Epochs of distillation.
        temperature: Softmax temperature of the soft targets.
        alpha: Weight of the hard-label loss (the transfer set here has no
            labels, so it is pure distillation and `alpha` is unused).
        batch_size: Batch size of the teacher and the scratch student.
        distill_batch_size: Batch size of distillation (the transfer set
            is 7 times larger than `train`).
        train_size: Use only the first `train_size` training examples
            (for quick runs); `None` uses all.
        transfer_size: Use only `transfer_size` transfer examples, drawn at
            random once; `None` uses all.
        data_dir: TFDS data directory.
        seed: Seed of weights and shuffling.
        verbose: `"auto"`, 0, 1 or 2, as in `Model.fit`.
        resume: Whether a training run that was killed resumes from its
            backup in `output_dir/.backup/` (the default). Finished runs
            leave no backup.
        cache: Whether the teacher runs once over the fixed transfer set
            (`keras_kd.cache_teacher_outputs`, the default) rather than on
            every batch of every epoch: the same distillation, faster.

    Returns:
        The report dict that is written to `report.json`.
    """
    # Fail on bad hyperparameters before minutes of teacher training.
    temperature = validate_temperature(temperature)
    alpha = validate_alpha(alpha)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    data, train_split = _load_labelled(
        dataset, train_size, batch_size, data_dir, seed
    )
    test = data["test"]
    transfer = _load_transfer(
        dataset, transfer_size, distill_batch_size, data_dir, seed,
        shuffle=not cache,  # the cache reshuffles the fixed set itself
    )
    histories = {}

    def train_teacher():
        # Seeded here: the same teacher whether or not the transfer set
        # above was loaded shuffled (`cache=False`).
        keras.utils.set_random_seed(seed)
        return training.train_teacher(
            data,
            split=train_split,
            epochs=teacher_epochs,
            validation_data=test,
            verbose=verbose,
            callbacks=_backup(output_dir, "teacher", resume),
        )

    teacher = _reuse_or_train(
        os.path.join(output_dir, "teacher.keras"),
        histories,
        "teacher",
        train_teacher,
        f"training the teacher on {dataset} ({teacher_epochs} epochs)",
    )

    _files.say(f"training the student from scratch ({student_epochs} epochs)")
    keras.utils.set_random_seed(seed)
    scratch = models.mlp_student(data.input_shape, data.num_classes)
    histories["student_scratch"] = training.train_classifier(
        # A fresh pipeline: its shuffles must not depend on whether the
        # teacher was trained (advancing the reshuffle) or reused.
        scratch,
        _load_labelled(dataset, train_size, batch_size, data_dir, seed)[0][
            train_split
        ],
        epochs=student_epochs,
        validation_data=test, verbose=verbose,
        callbacks=_backup(output_dir, "student_scratch", resume),
    )

    _files.say(
        f"distilling the teacher into the same MLP ({distill_epochs} epochs, "
        f"temperature={temperature}, alpha={alpha})"
    )
    keras.utils.set_random_seed(seed)
    distiller, histories["student_distilled"] = training.distill(
        teacher,
        models.mlp_student(data.input_shape, data.num_classes),
        transfer,
        epochs=distill_epochs,
        temperature=temperature,
        alpha=alpha,
        validation_data=test,
        verbose=verbose,
        callbacks=_backup(output_dir, "student_distilled", resume),
        cache=cache,
        seed=seed,
    )
    _files.save_model(distiller.student, os.path.join(output_dir, "student.keras"))

    latency_batch = next(iter(test.unbatch().batch(256)))[0]
    trained = {
        "teacher": teacher,
        "student_scratch": scratch,
        "student_distilled": distiller.student,
    }
    report = {
        "dataset": dataset,
        "models": {
            key: measure.describe(model, test, latency_batch)
            for key, model in trained.items()
        },
    }
    acc = {k: v["test_accuracy"] for k, v in report["models"].items()}
    report["gap_closed"] = gap_closed(
        acc["teacher"], acc["student_scratch"], acc["student_distilled"]
    )
    report["settings"] = {
        "temperature": temperature,
        "alpha": alpha,
        "teacher_epochs": teacher_epochs,
        "student_epochs": student_epochs,
        "distill_epochs": distill_epochs,
        "batch_size": batch_size,
        "distill_batch_size": distill_batch_size,
        "teacher_outputs_cached": cache,
        "train_examples": data.num_examples[train_split],
        "latency_batch_size": int(latency_batch.shape[0]),
        "seed": seed,
        "teacher_reused": "teacher" not in histories,
    }
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    _files.write_text(
        os.path.join(output_dir, "report.json"), json.dumps(report, indent=2) + "\n"
    )
    plot_learning_curves(histories, os.path.join(output_dir, "learning_curves.png"))
    print(format_report(report))
    return report


def run_ensemble_demo(
    output_dir="saved_models/demo_ensemble",
    *,
    num_teachers=3,
    dataset="mnist1d",
    teacher_epochs=40,
    student_epochs=60,
    distill_epochs=40,
    temperature=None,
    alpha=None,
    ensemble_average="probabilities",
    batch_size=64,
    distill_batch_size=256,
    train_size=None,
    transfer_size=None,
    data_dir=None,
    seed=0,
    verbose="auto",
    resume=True,
    cache=True,
):
    """Distils an ensemble of CNN teachers into an MLP, next to one teacher.

    1. Trains `num_teachers` CNN teachers (`keras_kd.models.cnn_teacher`)
       on `train`, teacher `i` with seed `seed + i` (its initialisation,
       dropout and data order), or reuses `output_dir/teacher_{i}.keras`
       when it is there.
    2. Trains the MLP student from scratch on `train`: the baseline.
    3. Distils the same MLP, from the same initialisation, from teacher 0
       alone and from the whole ensemble, on the same transfer set
       (`train` + `transfer`, inputs only) for the same epochs.
    4. Prints params, file size, test accuracy and CPU latency of every
       model (the ensemble's row is all teachers, averaging probabilities),
       and what the ensemble added over one teacher.
    5. Writes `teacher_{i}.keras`, `student.keras` (the student distilled
       from the ensemble), `report.json` and `learning_curves.png` to
       `output_dir`.

    Args:
        output_dir: Folder for the outputs. Earlier files are replaced,
            with a notice.
        num_teachers: Number of teachers, at least 2.
        dataset: A dataset name for `keras_kd.datasets.load` with a
            `transfer_set`; defaults to the embedded `"mnist1d"`.
        teacher_epochs: Epochs of each teacher.
        student_epochs: Epochs of the scratch student.
        distill_epochs: Epochs of each distillation.
        temperature: Softmax temperature; `None` for the Distiller's default.
        alpha: Weight of the hard-label loss; `None` for the default (the
            transfer set has no labels, so it is unused here).
        ensemble_average: `"probabilities"` or `"logits"`, see
            `keras_kd.Distiller`.
        batch_size: Batch size of the teachers and the scratch student.
        distill_batch_size: Batch size of distillation.
        train_size: Use only the first `train_size` training examples.
        transfer_size: Use only `transfer_size` transfer examples, drawn at
            random once.
        data_dir: TFDS data directory.
        seed: Base seed of weights and shuffling.
        verbose: `"auto"`, 0, 1 or 2, as in `Model.fit`.
        resume: Whether a training run that was killed resumes from its
            backup in `output_dir/.backup/` (the default). Finished runs
            leave no backup.
        cache: Whether each teacher runs once over the fixed transfer set
            (`keras_kd.cache_teacher_outputs`, the default) rather than on
            every batch of every epoch: the same distillation, faster.

    Returns:
        The report dict that is written to `report.json`.

    Raises:
        ValueError: if `num_teachers` < 2 or a hyperparameter is invalid.
    """
    if (
        isinstance(num_teachers, bool)
        or not isinstance(num_teachers, int)
        or num_teachers < 2
    ):
        raise ValueError(
            "Expected `num_teachers` to be an integer of at least 2 (one "
            "teacher is the standard demo). "
            f"Received: num_teachers={num_teachers!r}"
        )
    temperature, alpha = resolve_defaults("standard", temperature, alpha)
    ensemble_average = kd_ensemble.validate_average(ensemble_average)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    data, train_split = _load_labelled(
        dataset, train_size, batch_size, data_dir, seed
    )
    test = data["test"]
    transfer = _load_transfer(
        dataset, transfer_size, distill_batch_size, data_dir, seed,
        shuffle=not cache,  # the cache reshuffles the fixed set itself
    )
    histories = {}

    teachers = []
    for i in range(num_teachers):

        def train_teacher(i=i):
            keras.utils.set_random_seed(seed + i)
            own, _ = _load_labelled(
                dataset, train_size, batch_size, data_dir, seed + i
            )
            teacher = models.cnn_teacher(
                data.input_shape, data.num_classes, name=f"teacher_{i}"
            )
            history = training.train_classifier(
                teacher, own[train_split], epochs=teacher_epochs,
                learning_rate=3e-3, validation_data=test, verbose=verbose,
                callbacks=_backup(output_dir, f"teacher_{i}", resume),
            )
            return teacher, history

        teachers.append(
            _reuse_or_train(
                os.path.join(output_dir, f"teacher_{i}.keras"),
                histories,
                f"teacher_{i}",
                train_teacher,
                f"training teacher {i} of {num_teachers} on {dataset} "
                f"({teacher_epochs} epochs, seed {seed + i})",
            )
        )

    _files.say(f"training the student from scratch ({student_epochs} epochs)")
    keras.utils.set_random_seed(seed)
    scratch = models.mlp_student(data.input_shape, data.num_classes)
    histories["student_scratch"] = training.train_classifier(
        # A fresh pipeline: its shuffles must not depend on whether the
        # teacher was trained (advancing the reshuffle) or reused.
        scratch,
        _load_labelled(dataset, train_size, batch_size, data_dir, seed)[0][
            train_split
        ],
        epochs=student_epochs,
        validation_data=test, verbose=verbose,
        callbacks=_backup(output_dir, "student_scratch", resume),
    )

    students = {}
    for key, teacher, what in (
        ("student_single", teachers[0], "teacher 0 alone"),
        ("student_ensemble", teachers, f"the {num_teachers}-teacher ensemble"),
    ):
        _files.say(
            f"distilling {what} into the MLP ({distill_epochs} epochs, "
            f"temperature={temperature})"
        )
        source, validation = transfer, test
        if cache:  # each teacher runs once, not on every batch
            source, validation = training.cache_outputs(
                teacher, transfer, test, seed=seed
            )
        keras.utils.set_random_seed(seed)
        student = models.mlp_student(data.input_shape, data.num_classes)
        histories[key] = _distill(
            Distiller(
                student, teacher, temperature=temperature, alpha=alpha,
                ensemble_average=ensemble_average,
            ),
            source, epochs=distill_epochs, learning_rate=2e-3,
            validation_data=validation, verbose=verbose,
            callbacks=_backup(output_dir, key, resume),
        )
        students[key] = student
    _files.save_model(
        students["student_ensemble"], os.path.join(output_dir, "student.keras")
    )

    rows = _ensemble_rows(num_teachers)
    trained = {f"teacher_{i}": t for i, t in enumerate(teachers)}
    trained["teacher_ensemble"] = _ensemble_model(teachers)
    trained.update(student_scratch=scratch, **students)
    latency_batch = next(iter(test))[0]
    report = {
        "dataset": dataset,
        "models": {
            key: measure.describe(trained[key], test, latency_batch)
            for key, _ in rows
        },
    }
    acc = {k: v["test_accuracy"] for k, v in report["models"].items()}
    report["gap_closed"] = gap_closed(
        acc["teacher_ensemble"], acc["student_scratch"], acc["student_ensemble"]
    )
    report["ensemble_gain"] = acc["student_ensemble"] - acc["student_single"]
    report["settings"] = {
        "num_teachers": num_teachers,
        "teacher_seeds": [seed + i for i in range(num_teachers)],
        "ensemble_average": ensemble_average,
        "temperature": temperature,
        "alpha": alpha,
        "teacher_epochs": teacher_epochs,
        "student_epochs": student_epochs,
        "distill_epochs": distill_epochs,
        "batch_size": batch_size,
        "distill_batch_size": distill_batch_size,
        "teacher_outputs_cached": cache,
        "train_examples": data.num_examples[train_split],
        "latency_batch_size": int(latency_batch.shape[0]),
        "seed": seed,
        "teachers_reused": [
            f"teacher_{i}" not in histories for i in range(num_teachers)
        ],
    }
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    _files.write_text(
        os.path.join(output_dir, "report.json"), json.dumps(report, indent=2) + "\n"
    )
    plot_learning_curves(
        histories, os.path.join(output_dir, "learning_curves.png"), rows
    )
    print(format_ensemble_report(report))
    return report


def run_reverse_demo(
    output_dir="saved_models/demo_reverse",
    *,
    dataset="mnist1d",
    cnn_epochs=40,
    mlp_epochs=60,
    temperature=None,
    alpha=None,
    batch_size=64,
    train_size=None,
    data_dir=None,
    seed=0,
    verbose="auto",
    resume=True,
):
    """Reverse distillation: the small MLP teaches the large CNN.

    Re-KD (Yuan et al., CVPR 2020): a weaker teacher's soft targets act as
    a learned label smoothing for a stronger student.

    1. Trains the MLP (`keras_kd.models.mlp_student`) on `train`, or reuses
       `output_dir/teacher.keras` when it is there: the (weak) teacher.
    2. Trains the CNN (`keras_kd.models.cnn_teacher`) from scratch on
       `train`.
    3. Trains the same CNN, from the same initialisation and for the same
       epochs, on `train` with `Distiller(cnn, mlp, mode="reverse")`.
    4. Prints params, file size, test accuracy and CPU latency of the three
       models, and the reverse-distilled CNN's gain over the scratch CNN.
    5. Writes `teacher.keras` (the MLP), `student.keras` (the
       reverse-distilled CNN), `report.json` and `learning_curves.png` to
       `output_dir`, by default a folder of its own.

    Args:
        output_dir: Folder for the outputs. Earlier files are replaced,
            with a notice.
        dataset: A dataset name for `keras_kd.datasets.load`; defaults to
            the embedded `"mnist1d"`.
        cnn_epochs: Epochs of each of the two CNN runs.
        mlp_epochs: Epochs of the MLP teacher.
        temperature: Softmax temperature; `None` for reverse mode's default.
        alpha: Weight of the hard-label loss; `None` for reverse mode's
            default.
        batch_size: Batch size of every run (all on labelled `train`).
        train_size: Use only the first `train_size` training examples.
        data_dir: TFDS data directory.
        seed: Seed of weights and shuffling.
        verbose: `"auto"`, 0, 1 or 2, as in `Model.fit`.
        resume: Whether a training run that was killed resumes from its
            backup in `output_dir/.backup/` (the default). Finished runs
            leave no backup.

    Returns:
        The report dict that is written to `report.json`.

    Raises:
        ValueError: if `temperature` or `alpha` is invalid.
    """
    temperature, alpha = resolve_defaults("reverse", temperature, alpha)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    data, train_split = _load_labelled(
        dataset, train_size, batch_size, data_dir, seed
    )
    train, test = data[train_split], data["test"]
    histories = {}

    def train_mlp():
        keras.utils.set_random_seed(seed)
        mlp = models.mlp_student(data.input_shape, data.num_classes, name="mlp")
        history = training.train_classifier(
            mlp, train, epochs=mlp_epochs, learning_rate=1e-3,
            validation_data=test, verbose=verbose,
            callbacks=_backup(output_dir, "teacher", resume),
        )
        return mlp, history

    teacher = _reuse_or_train(
        os.path.join(output_dir, "teacher.keras"),
        histories,
        "teacher",
        train_mlp,
        f"training the small teacher (MLP) on {dataset} ({mlp_epochs} epochs)",
    )

    _files.say(f"training the CNN from scratch ({cnn_epochs} epochs)")
    keras.utils.set_random_seed(seed)
    scratch = models.cnn_teacher(data.input_shape, data.num_classes, name="cnn")
    histories["cnn_scratch"] = training.train_classifier(
        scratch, train, epochs=cnn_epochs, learning_rate=3e-3,
        validation_data=test, verbose=verbose,
        callbacks=_backup(output_dir, "cnn_scratch", resume),
    )

    _files.say(
        f"training the same CNN with reverse distillation from the MLP "
        f"({cnn_epochs} epochs, temperature={temperature}, alpha={alpha})"
    )
    keras.utils.set_random_seed(seed)
    reverse = models.cnn_teacher(data.input_shape, data.num_classes, name="cnn")
    histories["cnn_reverse"] = _distill(
        Distiller(
            reverse, teacher, mode="reverse", temperature=temperature,
            alpha=alpha,
        ),
        train, epochs=cnn_epochs, learning_rate=3e-3,
        validation_data=test, verbose=verbose,
        callbacks=_backup(output_dir, "cnn_reverse", resume),
    )
    _files.save_model(reverse, os.path.join(output_dir, "student.keras"))

    latency_batch = next(iter(test))[0]
    trained = {"teacher": teacher, "cnn_scratch": scratch, "cnn_reverse": reverse}
    report = {
        "dataset": dataset,
        "mode": "reverse",
        "models": {
            key: measure.describe(trained[key], test, latency_batch)
            for key, _ in _REVERSE_ROWS
        },
    }
    acc = {k: v["test_accuracy"] for k, v in report["models"].items()}
    report["reverse_gain"] = acc["cnn_reverse"] - acc["cnn_scratch"]
    report["settings"] = {
        "temperature": temperature,
        "alpha": alpha,
        "cnn_epochs": cnn_epochs,
        "mlp_epochs": mlp_epochs,
        "batch_size": batch_size,
        "train_examples": data.num_examples[train_split],
        "latency_batch_size": int(latency_batch.shape[0]),
        "seed": seed,
        "teacher_reused": "teacher" not in histories,
    }
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    _files.write_text(
        os.path.join(output_dir, "report.json"), json.dumps(report, indent=2) + "\n"
    )
    plot_learning_curves(
        histories, os.path.join(output_dir, "learning_curves.png"), _REVERSE_ROWS
    )
    print(format_reverse_report(report))
    return report


def _distill(distiller, data, *, epochs, learning_rate, validation_data, verbose,
             callbacks=None):
    """Compiles `distiller` (cosine-decayed Adam) and fits it; the history."""
    distiller.compile(
        optimizer=training.cosine_adam(learning_rate, epochs, data),
        metrics=["accuracy"],
    )
    return distiller.fit(
        data,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=training.resolve_verbose(verbose),
        shuffle=False,  # tf.data pipelines shuffle themselves.
    )


def _ensemble_model(teachers):
    """One model that averages the teachers' probabilities (for measuring)."""
    inputs = keras.Input(teachers[0].input_shape[1:])
    probabilities = [
        keras.layers.Softmax()(teacher(inputs, training=False))
        for teacher in teachers
    ]
    outputs = keras.layers.Average()(probabilities)
    return keras.Model(inputs, outputs, name="teacher_ensemble")


def _ensemble_rows(num_teachers):
    return (
        *((f"teacher_{i}", f"teacher {i} (CNN)") for i in range(num_teachers)),
        ("teacher_ensemble", f"ensemble of {num_teachers} (CNN)"),
        ("student_scratch", "student from scratch (MLP)"),
        ("student_single", "distilled, teacher 0 (MLP)"),
        ("student_ensemble", "distilled, ensemble (MLP)"),
    )


def format_ensemble_report(report):
    """The ensemble demo's table, as text."""
    num_teachers = report["settings"]["num_teachers"]
    lines = _table(report, _ensemble_rows(num_teachers))
    acc = {k: v["test_accuracy"] for k, v in report["models"].items()}
    lines.append(
        f"Ensemble of {num_teachers} ({report['settings']['ensemble_average']}"
        f" averaged): {100 * report['ensemble_gain']:+.2f} points over the "
        f"student distilled from one teacher, "
        f"{100 * (acc['student_ensemble'] - acc['student_scratch']):+.2f} over "
        f"the scratch student; {_gap_text(report, 'ensemble')}"
    )
    if "wall_time_s" in report:
        lines.append(f"Wall time: {report['wall_time_s']:.0f} s")
    return "\n".join(lines)


def format_reverse_report(report):
    """The reverse demo's table, as text."""
    lines = _table(report, _REVERSE_ROWS)
    settings = report["settings"]
    lines.append(
        f"Reverse distillation (temperature={settings['temperature']:g}, "
        f"alpha={settings['alpha']:g}): {100 * report['reverse_gain']:+.2f} "
        "points for the CNN over the same CNN trained from scratch."
    )
    if "wall_time_s" in report:
        lines.append(f"Wall time: {report['wall_time_s']:.0f} s")
    return "\n".join(lines)


def format_report(report):
    """The demo's table, as text."""
    lines = _table(report, _ROWS)
    acc = {k: report["models"][k]["test_accuracy"] for k, _ in _ROWS}
    gain = 100 * (acc["student_distilled"] - acc["student_scratch"])
    lines.append(
        f"Distillation: {gain:+.2f} points over the scratch student; "
        f"{_gap_text(report, 'teacher')}"
    )
    if "wall_time_s" in report:
        lines.append(f"Wall time: {report['wall_time_s']:.0f} s")
    return "\n".join(lines)


def _table(report, rows):
    """The header and one line per `(key, label)` of `rows`, as lines."""
    batch = report.get("settings", {}).get("latency_batch_size", "?")
    lines = [
        f"Dataset: {report['dataset']}",
        f"{'model':<28}{'params':>10}{'size (KB)':>12}{'test acc':>10}"
        f"{f'latency (ms/batch of {batch})':>30}",
    ]
    for key, label in rows:
        m = report["models"][key]
        lines.append(
            f"{label:<28}{m['params']:>10,}{m['size_bytes'] / 1024:>12.1f}"
            f"{100 * m['test_accuracy']:>9.2f}%{m['latency_ms']:>30.3f}"
        )
    return lines


def plot_learning_curves(histories, path, rows=_ROWS):
    """Saves a PNG of validation accuracy and training loss per epoch.

    Args:
        histories: Dict mapping a row key to a `keras.callbacks.History`.
        path: Destination `.png` path.
        rows: `(key, label)` pairs: the curves to draw, in order.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in rows:
        if key not in histories:
            continue
        h = histories[key].history
        epochs = range(1, len(h["loss"]) + 1)
        if "val_accuracy" in h:
            ax_acc.plot(epochs, h["val_accuracy"], label=label)
        ax_loss.plot(epochs, h["loss"], label=label)
    ax_acc.set(title="Test accuracy", xlabel="epoch", ylabel="accuracy")
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        _files.say(f"replacing {path}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
