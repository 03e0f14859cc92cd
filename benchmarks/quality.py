"""What soft targets add: teacher, scratch, soft-distilled and hard-pseudo-label
students, mean ± std over seeds, on MNIST-1D and on real MNIST digits.

    .venv/bin/python benchmarks/quality.py            # every suite, seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --datasets mnist1d-scarce
    .venv/bin/python benchmarks/quality.py --quick    # a smoke run

Suites:
  mnist1d         MNIST-1D, transfer set = train + the 25,000 unlabelled
                  `transfer` inputs (29,000)
  mnist1d-scarce  MNIST-1D, transfer set = the 4,000 train inputs only
  mnist-t10k      real MNIST digits from ../shared/data/mnist-t10k (its
                  README fixes the split: even indices train, odd indices
                  test), transfer set = the 5,000 train images; skipped when
                  the folder is absent

Every student sees the same transfer inputs for the same number of epochs:
soft targets (the Distiller, default T and alpha, no labels) against the
teacher's argmax as hard labels (plain cross-entropy). Writes
benchmarks/quality.json, replacing only the suites it ran (and saying so).
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from _common import load_mnist_t10k, mean_std

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ("teacher", "student_scratch", "student_soft", "student_hard_pseudo")
SUITES = ("mnist1d", "mnist1d-scarce", "mnist-t10k")


def _batches(x, y=None, batch_size=64, seed=0):
    items = x if y is None else (x, y)
    ds = tf.data.Dataset.from_tensor_slices(items)
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), -1) == y))


def run_seed(data, transfer_x, seed, epochs, input_shape, num_classes):
    (x, y), (xt, yt) = data["train"], data["test"]
    test = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(512)
    results = {}

    keras.utils.set_random_seed(seed)
    teacher = keras_kd.models.cnn_teacher(input_shape, num_classes)
    keras_kd.training.train_classifier(
        teacher, _batches(x, y, seed=seed), epochs=epochs["teacher"],
        learning_rate=3e-3, verbose=0)
    results["teacher"] = _accuracy(teacher, xt, yt)

    keras.utils.set_random_seed(seed)
    scratch = keras_kd.models.mlp_student(input_shape, num_classes)
    keras_kd.training.train_classifier(
        scratch, _batches(x, y, seed=seed), epochs=epochs["student"], verbose=0)
    results["student_scratch"] = _accuracy(scratch, xt, yt)

    # Soft targets: the teacher runs once over the transfer inputs (cache).
    keras.utils.set_random_seed(seed)
    transfer = keras_kd.cache_teacher_outputs(teacher, transfer_x, batch_size=256, seed=seed)
    distiller, _ = keras_kd.training.distill(
        teacher, keras_kd.models.mlp_student(input_shape, num_classes), transfer,
        epochs=epochs["distill"], validation_data=test, verbose=0)
    results["student_soft"] = _accuracy(distiller.student, xt, yt)

    # Hard pseudo-labels: the same inputs labelled with the teacher's argmax.
    keras.utils.set_random_seed(seed)
    pseudo = np.argmax(teacher.predict(transfer_x, batch_size=512, verbose=0), -1)
    hard = keras_kd.models.mlp_student(input_shape, num_classes)
    keras_kd.training.train_classifier(
        hard, _batches(transfer_x, pseudo, batch_size=256, seed=seed),
        epochs=epochs["distill"], learning_rate=2e-3, verbose=0)
    results["student_hard_pseudo"] = _accuracy(hard, xt, yt)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default=",".join(SUITES),
                        help="comma-separated suites: " + ", ".join(SUITES))
    parser.add_argument("--quick", action="store_true", help="1 epoch each, small data")
    parser.add_argument("--output", default=None,
                        help="default benchmarks/quality.json "
                             "(benchmarks/quality.quick.json with --quick)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.output is None:
        name = "quality.quick.json" if args.quick else "quality.json"
        args.output = os.path.join(HERE, name)

    wanted = args.datasets.split(",")
    unknown = sorted(set(wanted) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; expected some of {SUITES}")
    suites = {}
    x, y = keras_kd.datasets.load_mnist1d("train")
    mnist1d = {"train": (x, y), "test": keras_kd.datasets.load_mnist1d("test")}
    if "mnist1d" in wanted:
        transfer_x = np.concatenate([x, keras_kd.datasets.load_mnist1d("transfer")])
        suites["mnist1d"] = (
            mnist1d, transfer_x, (40,),
            {"teacher": 40, "student": 60, "distill": 40},
        )
    if "mnist1d-scarce" in wanted:  # about as many steps as on 29,000
        suites["mnist1d-scarce"] = (
            mnist1d, x, (40,), {"teacher": 40, "student": 60, "distill": 250},
        )
    mnist = load_mnist_t10k() if "mnist-t10k" in wanted else None
    if mnist is not None:
        suites["mnist-t10k"] = (
            mnist, mnist["train"][0], (28, 28),
            {"teacher": 15, "student": 40, "distill": 60},
        )
    elif "mnist-t10k" in wanted:
        print("../shared/data/mnist-t10k not found: skipping real MNIST digits")

    report = {"seeds": seeds, "settings": {
        "temperature": keras_kd.distiller.DEFAULT_TEMPERATURE,
        "alpha": keras_kd.distiller.DEFAULT_ALPHA}, "datasets": {}}
    for name, (data, transfer_x, shape, epochs) in suites.items():
        if args.quick:
            epochs = {k: 1 for k in epochs}
            data = {k: (v[0][:512], v[1][:512]) for k, v in data.items()}
            transfer_x = transfer_x[:1024]
        start = time.perf_counter()
        runs = [run_seed(data, transfer_x, s, epochs, shape, 10) for s in seeds]
        report["datasets"][name] = {
            "train_examples": len(data["train"][0]),
            "transfer_examples": len(transfer_x),
            "test_examples": len(data["test"][0]),
            "epochs": epochs,
            "wall_time_s": round(time.perf_counter() - start, 1),
            **{row: mean_std(r[row] for r in runs) for row in ROWS},
            "soft_minus_hard_paired": mean_std(
                r["student_soft"] - r["student_hard_pseudo"] for r in runs),
        }
        print(format_table(name, report["datasets"][name]), flush=True)
    if os.path.exists(args.output):
        with open(args.output) as f:
            earlier = json.load(f)
        replaced = sorted(set(earlier.get("datasets", {})) & set(report["datasets"]))
        if replaced:
            print(f"replacing {replaced} in {args.output}")
        earlier.setdefault("datasets", {}).update(report["datasets"])
        report["datasets"] = earlier["datasets"]
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")


def format_table(name, result):
    lines = [f"{name}: train {result['train_examples']}, transfer "
             f"{result['transfer_examples']}, test {result['test_examples']}",
             f"  {'model':<24}{'test accuracy (mean ± std)':>30}"]
    for row in ROWS:
        r = result[row]
        lines.append(f"  {row:<24}{100 * r['mean']:>22.2f} ± {100 * r['std']:.2f}")
    d = result["soft_minus_hard_paired"]
    lines.append(f"  {'soft - hard, paired':<24}{100 * d['mean']:>+22.2f} ± {100 * d['std']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
