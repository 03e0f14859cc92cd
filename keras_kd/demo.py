"""The main job: distil a CNN teacher into an MLP on MNIST-1D and report it.

`run_demo` is what `keras-kd demo` and `make demo` run. Everything it needs
is generated offline.
"""

import json
import math
import os
import time

import keras

from keras_kd import _files
from keras_kd import datasets
from keras_kd import measure
from keras_kd import models
from keras_kd import training
from keras_kd.distiller import DEFAULT_ALPHA
from keras_kd.distiller import DEFAULT_TEMPERATURE
from keras_kd.distiller import validate_alpha
from keras_kd.losses import validate_temperature

_ROWS = (
    ("teacher", "teacher (CNN)"),
    ("student_scratch", "student from scratch (MLP)"),
    ("student_distilled", "student distilled (MLP)"),
)


def gap_closed(teacher, scratch, distilled):
    """Share of the teacher-scratch accuracy gap that distillation closed.

    `(distilled - scratch) / (teacher - scratch)`; NaN when the teacher is
    no better than the scratch student (there is no gap to close).
    """
    gap = teacher - scratch
    return (distilled - scratch) / gap if gap > 0 else float("nan")


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
        transfer_size: Use only about `transfer_size` transfer examples
            (whole batches); `None` uses all.
        data_dir: TFDS data directory.
        seed: Seed of weights and shuffling.
        verbose: `"auto"`, 0, 1 or 2, as in `Model.fit`.

    Returns:
        The report dict that is written to `report.json`.
    """
    # Fail on bad hyperparameters before minutes of teacher training.
    temperature = validate_temperature(temperature)
    alpha = validate_alpha(alpha)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    train_split = "train" if train_size is None else f"train[:{int(train_size)}]"
    data = datasets.load(
        dataset,
        splits=(train_split, "test"),
        batch_size=batch_size,
        data_dir=data_dir,
        seed=seed,
    )
    test = data["test"]
    transfer = datasets.transfer_set(
        dataset, batch_size=distill_batch_size, data_dir=data_dir, seed=seed
    )
    if transfer_size is not None:
        batches = math.ceil(transfer_size / distill_batch_size)
        transfer = transfer.take(max(1, batches))
    histories = {}

    teacher_path = os.path.join(output_dir, "teacher.keras")
    if os.path.exists(teacher_path):
        _files.say(f"reusing the teacher in {teacher_path} (delete it to retrain)")
        teacher = _files.load_model(teacher_path, argument="teacher")
    else:
        _files.say(f"training the teacher on {dataset} ({teacher_epochs} epochs)")
        teacher, histories["teacher"] = training.train_teacher(
            data,
            split=train_split,
            epochs=teacher_epochs,
            validation_data=test,
            verbose=verbose,
        )
        _files.save_model(teacher, teacher_path)

    _files.say(f"training the student from scratch ({student_epochs} epochs)")
    keras.utils.set_random_seed(seed)
    scratch = models.mlp_student(data.input_shape, data.num_classes)
    histories["student_scratch"] = training.train_classifier(
        scratch, data[train_split], epochs=student_epochs,
        validation_data=test, verbose=verbose,
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
    )
    _files.save_model(distiller.student, os.path.join(output_dir, "student.keras"))

    latency_batch = next(iter(test))[0]
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


def format_report(report):
    """The demo's table, as text."""
    batch = report.get("settings", {}).get("latency_batch_size", "?")
    lines = [
        f"Dataset: {report['dataset']}",
        f"{'model':<28}{'params':>10}{'size (KB)':>12}{'test acc':>10}"
        f"{f'latency (ms/batch of {batch})':>30}",
    ]
    for key, label in _ROWS:
        m = report["models"][key]
        lines.append(
            f"{label:<28}{m['params']:>10,}{m['size_bytes'] / 1024:>12.1f}"
            f"{100 * m['test_accuracy']:>9.2f}%{m['latency_ms']:>30.3f}"
        )
    acc = {k: report["models"][k]["test_accuracy"] for k, _ in _ROWS}
    gain = 100 * (acc["student_distilled"] - acc["student_scratch"])
    lines.append(
        f"Distillation: {gain:+.2f} points over the scratch student; it "
        f"closed {report['gap_closed']:.0%} of the teacher-scratch gap."
    )
    if "wall_time_s" in report:
        lines.append(f"Wall time: {report['wall_time_s']:.0f} s")
    return "\n".join(lines)


def plot_learning_curves(histories, path):
    """Saves a PNG of validation accuracy and training loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in _ROWS:
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
