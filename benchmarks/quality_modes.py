"""Do teacher ensembles and reverse distillation help? Measured on MNIST-1D.

Two comparisons, each over several seeds (mean ± sample std, ddof=1):

1. **Ensembles.** The 100-100 MLP student distilled from one CNN teacher
   vs from an ensemble of three CNN teachers (the first of which is the
   single teacher), with both ensemble averages (`"probabilities"`,
   `"logits"`). Same transfer set (`train` + `transfer`, 29,000 inputs, no
   labels), same student initialisation, epochs, batch and learning rate.
2. **Reverse distillation** (Yuan et al., CVPR 2020). The CNN trained on
   `train` with `Distiller(cnn, mlp, mode="reverse")` (the mode's default
   temperature and alpha) vs the same CNN, from the same initialisation,
   trained from scratch. The MLP teacher is the scratch MLP of the seed.

`--part reverse-sweep` is how the reverse-mode defaults were chosen: a grid
of (temperature, alpha) on a validation split held out of `train` (the
last 500 examples; models train on the first 3,500). The test split is
never used to select anything.

Every teacher is trained once per seed. Teachers are deterministic at
inference and the transfer set is not augmented, so their logits on it are
computed once with `predict`; distillation then reads them from the
dataset through pass-through "teachers" (here only: the library has no
such cache), which gives the same soft targets as running the teachers
every batch, ~9x faster.

Usage (from the repository root):

    .venv/bin/python benchmarks/quality_modes.py                      # 20-36 min
    .venv/bin/python benchmarks/quality_modes.py --part reverse-sweep  # ~40 min

(Wall times on 2 CPU cores: the lower figure with the cores to itself, the
higher one shared with other jobs; the recorded runs are in the JSON.)

Each part updates its own key of `benchmarks/quality_modes.json`.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import distiller as kd_distiller  # noqa: E402
from keras_kd import models  # noqa: E402
from keras_kd import training  # noqa: E402
from keras_kd.datasets import load_mnist1d  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "quality_modes.json")

# The demo's settings (README, "The demo").
SETTINGS = {
    "teacher": {"epochs": 40, "batch_size": 64, "learning_rate": 3e-3},
    "mlp_scratch": {"epochs": 60, "batch_size": 64, "learning_rate": 1e-3},
    # T = 2, pinned: the standard default when these numbers were measured.
    "distill": {"epochs": 40, "batch_size": 256, "learning_rate": 2e-3,
                "temperature": 2.0},
    "reverse": {"epochs": 40, "batch_size": 64, "learning_rate": 3e-3},
    "num_teachers": 3,
}
# The reverse sweep's grid: (weak teacher, temperature, alpha). (2.0, 0.1)
# is the standard mode's defaults, for reference. "small_cnn" is the CNN at
# width 8 (about 6,900 parameters, fewer than the MLP's 15,210): a weaker
# teacher that is less far behind the student than the MLP.
REVERSE_GRID = (
    ("mlp", 2.0, 0.1), ("mlp", 1.0, 0.5), ("mlp", 4.0, 0.5), ("mlp", 10.0, 0.5),
    ("mlp", 1.0, 0.9), ("mlp", 4.0, 0.9), ("mlp", 10.0, 0.9),
    ("small_cnn", 1.0, 0.5), ("small_cnn", 4.0, 0.5), ("small_cnn", 1.0, 0.9),
    ("small_cnn", 4.0, 0.9),
)
SMALL_CNN_WIDTH = 8
VALIDATION_SIZE = 500


def say(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def labelled(x, y, batch_size, seed):
    """Shuffled (each epoch, seeded), batched `(x, y)` pipeline."""
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=1024, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def summary(values):
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def fmt(stats, scale=100.0):
    return f"{scale * stats['mean']:.2f} ± {scale * stats['std']:.2f}"


# --------------------------------------------------------------------- #
# Pass-through models: distillation from precomputed teacher logits.
# --------------------------------------------------------------------- #
class Column(keras.Model):
    """A 'teacher' that returns `inputs[index]`: precomputed logits."""

    def __init__(self, index, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def call(self, inputs, training=False):
        return inputs[self.index]


class OnFirstInput(keras.Model):
    """Runs `model` on `inputs[0]`, ignoring the precomputed logits."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, inputs, training=False):
        return self.model(inputs[0], training=training)


def distill_from_logits(student, x, teacher_logits, seed, **distiller_kwargs):
    """Pure distillation of `student` from precomputed logits (one array per
    teacher) on the inputs `x`; returns the trained `student`."""
    cfg = SETTINGS["distill"]
    columns = tuple(range(1, len(teacher_logits) + 1))
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, *teacher_logits))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(cfg["batch_size"])
        # One element `((x, z_0, ...),)`: all of it is the input, no labels.
        .map(lambda *columns: (columns,))
        .prefetch(tf.data.AUTOTUNE)
    )
    teachers = [Column(i, name=f"teacher_{i - 1}") for i in columns]
    with warnings.catch_warnings():
        # The pass-through teachers have no weights, so the size guard rail
        # would (wrongly) call them smaller than the student; no labels
        # either, which is the point of a transfer set.
        warnings.simplefilter("ignore", UserWarning)
        distiller = keras_kd.Distiller(
            OnFirstInput(student),
            teachers if len(teachers) > 1 else teachers[0],
            temperature=cfg["temperature"],
            **distiller_kwargs,
        )
        distiller.compile(
            optimizer=training.cosine_adam(
                cfg["learning_rate"], cfg["epochs"], dataset
            )
        )
        distiller.fit(dataset, epochs=cfg["epochs"], verbose=0, shuffle=False)
    return student


def train_cnn(x, y, seed, init_seed):
    cfg = SETTINGS["teacher"]
    keras.utils.set_random_seed(init_seed)
    model = models.cnn_teacher((40,), 10, name=f"cnn_{init_seed}")
    training.train_classifier(
        model, labelled(x, y, cfg["batch_size"], seed),
        epochs=cfg["epochs"], learning_rate=cfg["learning_rate"], verbose=0,
    )
    return model


def train_mlp(x, y, seed):
    cfg = SETTINGS["mlp_scratch"]
    keras.utils.set_random_seed(seed)
    model = models.mlp_student((40,), 10, name="mlp")
    training.train_classifier(
        model, labelled(x, y, cfg["batch_size"], seed),
        epochs=cfg["epochs"], learning_rate=cfg["learning_rate"], verbose=0,
    )
    return model


def train_reverse(x, y, teacher, seed, init_seed, **kwargs):
    """The CNN (initialised like `train_cnn(..., init_seed)`) trained with
    reverse distillation from `teacher` on labelled `(x, y)`."""
    cfg = SETTINGS["reverse"]
    keras.utils.set_random_seed(init_seed)
    model = models.cnn_teacher((40,), 10, name=f"cnn_{init_seed}")
    data = labelled(x, y, cfg["batch_size"], seed)
    distiller = keras_kd.Distiller(model, teacher, mode="reverse", **kwargs)
    distiller.compile(
        optimizer=training.cosine_adam(cfg["learning_rate"], cfg["epochs"], data)
    )
    distiller.fit(data, epochs=cfg["epochs"], verbose=0, shuffle=False)
    return model, distiller


# --------------------------------------------------------------------- #
# Parts
# --------------------------------------------------------------------- #
def run_main(seeds):
    x_train, y_train = load_mnist1d("train")
    x_test, y_test = load_mnist1d("test")
    x_transfer = np.concatenate([x_train, load_mnist1d("transfer")])
    n = SETTINGS["num_teachers"]
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        teachers = []
        for i in range(n):
            start = time.perf_counter()
            teachers.append(
                train_cnn(x_train, y_train, seed, init_seed=100 * seed + i)
            )
            say(f"seed {seed}: teacher {i} {accuracy(teachers[-1], x_test, y_test):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
        row["teachers"] = [accuracy(t, x_test, y_test) for t in teachers]
        logits = [t.predict(x_transfer, batch_size=1024, verbose=0) for t in teachers]
        test_logits = [t.predict(x_test, batch_size=1024, verbose=0) for t in teachers]
        mean_probs = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(z))
                              for z in test_logits], axis=0)
        row["teacher_ensemble"] = float(np.mean(np.argmax(mean_probs, -1) == y_test))

        arms = {
            "single": ([logits[0]], {}),
            "ensemble_probabilities": (logits, {"ensemble_average": "probabilities"}),
            "ensemble_logits": (logits, {"ensemble_average": "logits"}),
        }
        for arm, (arm_logits, kwargs) in arms.items():
            start = time.perf_counter()
            keras.utils.set_random_seed(seed)
            student = models.mlp_student((40,), 10, name=f"student_{arm}")
            distill_from_logits(student, x_transfer, arm_logits, seed, **kwargs)
            row[f"student_{arm}"] = accuracy(student, x_test, y_test)
            say(f"seed {seed}: student {arm} {row[f'student_{arm}']:.4f} "
                f"({time.perf_counter() - start:.0f} s)")

        start = time.perf_counter()
        mlp = train_mlp(x_train, y_train, seed)
        row["mlp_scratch"] = accuracy(mlp, x_test, y_test)
        say(f"seed {seed}: MLP scratch {row['mlp_scratch']:.4f} "
            f"({time.perf_counter() - start:.0f} s)")
        # The CNN from scratch is teacher 0 (same initialisation, data order).
        row["cnn_scratch"] = row["teachers"][0]
        start = time.perf_counter()
        cnn, distiller = train_reverse(x_train, y_train, mlp, seed, init_seed=100 * seed)
        row["cnn_reverse"] = accuracy(cnn, x_test, y_test)
        row["reverse_temperature"] = distiller.temperature
        row["reverse_alpha"] = distiller.alpha
        say(f"seed {seed}: CNN reverse {row['cnn_reverse']:.4f} vs scratch "
            f"{row['cnn_scratch']:.4f} ({time.perf_counter() - start:.0f} s)")
        rows.append(row)

    def stats(key):
        return summary([r[key] for r in rows])

    def paired(a, b):
        return summary([r[a] - r[b] for r in rows])

    ensemble = {
        "per_seed": [
            {k: r[k] for k in ("seed", "teachers", "teacher_ensemble",
                               "student_single", "student_ensemble_probabilities",
                               "student_ensemble_logits", "mlp_scratch")}
            for r in rows
        ],
        "accuracy": {
            "teacher (each CNN)": summary([a for r in rows for a in r["teachers"]]),
            "teacher ensemble (mean probabilities)": stats("teacher_ensemble"),
            "student from scratch": stats("mlp_scratch"),
            "student distilled, 1 teacher": stats("student_single"),
            "student distilled, 3 teachers (probabilities)":
                stats("student_ensemble_probabilities"),
            "student distilled, 3 teachers (logits)": stats("student_ensemble_logits"),
        },
        "paired_gain_over_single": {
            "probabilities": paired("student_ensemble_probabilities", "student_single"),
            "logits": paired("student_ensemble_logits", "student_single"),
        },
    }
    reverse = {
        "per_seed": [
            {k: r[k] for k in ("seed", "mlp_scratch", "cnn_scratch", "cnn_reverse")}
            for r in rows
        ],
        "temperature": rows[0]["reverse_temperature"],
        "alpha": rows[0]["reverse_alpha"],
        "accuracy": {
            "teacher: MLP from scratch": stats("mlp_scratch"),
            "CNN from scratch": stats("cnn_scratch"),
            "CNN reverse-distilled from the MLP": stats("cnn_reverse"),
        },
        "paired_gain_over_scratch": paired("cnn_reverse", "cnn_scratch"),
    }
    return {"ensemble": ensemble, "reverse": reverse}


def grid_key(teacher, temperature, alpha):
    return f"{teacher}, T={temperature:g}, alpha={alpha:g}"


def train_small_cnn(x, y, seed):
    cfg = SETTINGS["teacher"]
    keras.utils.set_random_seed(seed)
    model = models.cnn_teacher((40,), 10, width=SMALL_CNN_WIDTH, name="small_cnn")
    training.train_classifier(
        model, labelled(x, y, cfg["batch_size"], seed),
        epochs=cfg["epochs"], learning_rate=cfg["learning_rate"], verbose=0,
    )
    return model


def run_reverse_sweep(seeds, stored=None):
    """The grid on a validation split. With `stored` (an earlier sweep's
    record), grid points already measured for a seed are kept, not rerun;
    the base models are retrained (they are the teachers) and whether they
    reproduce the stored accuracies exactly is recorded."""
    x, y = load_mnist1d("train")
    x_fit, y_fit = x[:-VALIDATION_SIZE], y[:-VALIDATION_SIZE]
    x_val, y_val = x[-VALIDATION_SIZE:], y[-VALIDATION_SIZE:]
    stored_rows = {r["seed"]: r for r in (stored or {}).get("per_seed", [])}
    per_seed, reproduced = [], {}
    for seed in seeds:
        old = stored_rows.get(seed, {})
        row = {"seed": seed}
        weak = {"mlp": train_mlp(x_fit, y_fit, seed)}
        if any(t == "small_cnn" for t, _, _ in REVERSE_GRID):
            weak["small_cnn"] = train_small_cnn(x_fit, y_fit, seed)
        row["mlp_scratch"] = accuracy(weak["mlp"], x_val, y_val)
        if "small_cnn" in weak:
            row["small_cnn_scratch"] = accuracy(weak["small_cnn"], x_val, y_val)
        start = time.perf_counter()
        row["cnn_scratch"] = accuracy(
            train_cnn(x_fit, y_fit, seed, init_seed=100 * seed), x_val, y_val
        )
        say(f"seed {seed}: weak teachers {row['mlp_scratch']:.4f} "
            f"{row.get('small_cnn_scratch', float('nan')):.4f}, CNN scratch "
            f"{row['cnn_scratch']:.4f} ({time.perf_counter() - start:.0f} s)")
        for key in ("mlp_scratch", "small_cnn_scratch", "cnn_scratch"):
            if key in old and key in row:
                reproduced[f"seed {seed} {key}"] = old[key] == row[key]
        for teacher, temperature, alpha in REVERSE_GRID:
            key = grid_key(teacher, temperature, alpha)
            if key in old:
                row[key] = old[key]
                continue
            start = time.perf_counter()
            cnn, _ = train_reverse(x_fit, y_fit, weak[teacher], seed,
                                   init_seed=100 * seed,
                                   temperature=temperature, alpha=alpha)
            row[key] = accuracy(cnn, x_val, y_val)
            say(f"seed {seed}: reverse {key}: {row[key]:.4f} "
                f"({time.perf_counter() - start:.0f} s)")
        per_seed.append(row)
    bases = [k for k in ("mlp_scratch", "small_cnn_scratch", "cnn_scratch")
             if all(k in r for r in per_seed)]
    grid = [grid_key(*point) for point in REVERSE_GRID]
    result = {
        "split": f"fit on train[:{-VALIDATION_SIZE}], validate on "
                 f"train[{-VALIDATION_SIZE}:]",
        "small_cnn_width": SMALL_CNN_WIDTH,
        "per_seed": per_seed,
        "validation_accuracy": {
            k: summary([r[k] for r in per_seed]) for k in bases + grid
        },
        "paired_gain_over_scratch": {
            k: summary([r[k] - r["cnn_scratch"] for r in per_seed]) for k in grid
        },
    }
    if reproduced:
        result["stored_base_models_reproduced"] = reproduced
    return result


def print_main(result):
    ens, rev = result["ensemble"], result["reverse"]
    print("Test accuracy, %, mean ± std over seeds", result["seeds"])
    for label, stats in ens["accuracy"].items():
        print(f"  {label:<48}{fmt(stats):>16}")
    for arm, stats in ens["paired_gain_over_single"].items():
        print(f"  ensemble ({arm}) - single, paired:{fmt(stats):>31} points")
    print(f"Reverse distillation (T={rev['temperature']:g}, alpha={rev['alpha']:g})")
    for label, stats in rev["accuracy"].items():
        print(f"  {label:<48}{fmt(stats):>16}")
    print(f"  reverse - scratch, paired:{fmt(rev['paired_gain_over_scratch']):>37} points")


def print_sweep(result):
    print("Reverse sweep, validation accuracy %, seeds", result["seeds"])
    gains = result["paired_gain_over_scratch"]
    for label, stats in result["validation_accuracy"].items():
        gain = f"   {fmt(gains[label])} vs scratch" if label in gains else ""
        print(f"  {label:<32}{fmt(stats):>16}{gain}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("main", "reverse-sweep"), default="main")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 2 (main), 0 1 (reverse-sweep)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--extend", action="store_true",
                        help="reverse-sweep: keep the grid points already in --output")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch everywhere: checks the script, not the numbers")
    args = parser.parse_args(argv)
    if args.quick:
        for cfg in SETTINGS.values():
            if isinstance(cfg, dict):
                cfg["epochs"] = 1
    start = time.perf_counter()
    if args.part == "main":
        seeds = args.seeds or [0, 1, 2]
        result = run_main(seeds)
        key = "main"
    else:
        seeds = args.seeds or [0, 1]
        stored = None
        if args.extend and os.path.exists(args.output):
            with open(args.output) as f:
                stored = json.load(f).get("reverse_sweep")
        result = run_reverse_sweep(seeds, stored)
        key = "reverse_sweep"
    record = {
        "seeds": seeds,
        "settings": {
            **SETTINGS,
            "standard_temperature": kd_distiller.DEFAULT_TEMPERATURE,
            "reverse_defaults": {"temperature": kd_distiller.REVERSE_TEMPERATURE,
                                 "alpha": kd_distiller.REVERSE_ALPHA},
            "quick": args.quick,
        },
        "environment": {
            "keras": keras.__version__, "tensorflow": tf.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
        },
        "wall_time_s": round(time.perf_counter() - start, 1),
        **result,
    }
    if key == "main":
        print_main(record)
    else:
        print_sweep(record)
    existing = {}
    if os.path.exists(args.output):
        with open(args.output) as f:
            existing = json.load(f)
    existing[key] = record
    with open(args.output, "w") as f:
        json.dump(existing, f, indent=2)
        f.write("\n")
    say(f"wrote {args.output} ({record['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
