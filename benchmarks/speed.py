"""Epoch time of distillation variants, side by side, as ratios to the floor.

    .venv/bin/python benchmarks/speed.py             # 31 rounds (make bench)
    .venv/bin/python benchmarks/speed.py --rounds 3  # quicker

Every variant trains the same MLP student on the same MNIST-1D transfer set
(train + transfer, 29,000 inputs, batch 256). One warm-up epoch each
(tracing), then rounds that alternate the variants (A B C ... A B C ...,
each round starting one variant later, so that no variant always follows
the same one); each variant's epoch time is the median over rounds:

  a  student alone, cross-entropy on labels, on a shuffled tf.data
     pipeline of the arrays: the floor
  a_arrays  the same student, Model.fit on the numpy arrays
  b  keras_kd.Distiller, teacher run every batch (uncached)
  c  keras_kd.Distiller on cached teacher outputs (arrays given)
  c_xla  the same with jit_compile=True
  c_dataset  cached from an unshuffled tf.data.Dataset (held in memory)
  c_streamed  the same, memory limit too small for the inputs: they
     stream from the source each epoch, only the outputs are held
  d  keras.distillation.Distiller, LogitsDistillation(loss=KLDivergence())
  e_uncached / e_cached  3-teacher ensemble

Writes benchmarks/results.json with the medians, min-max spread and ratios.
"""

import argparse
import json
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from _common import spread

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 256
T = 2.0


def _teacher(seed, x, y):
    keras.utils.set_random_seed(seed)
    teacher = keras_kd.models.cnn_teacher((40,), 10)
    keras_kd.training.train_classifier(
        teacher, tf.data.Dataset.from_tensor_slices((x, y)).batch(64),
        epochs=1, verbose=0)  # speed only: accuracy does not matter here
    return teacher


def _student():
    keras.utils.set_random_seed(0)
    return keras_kd.models.mlp_student((40,), 10)


def build_variants(teachers, X, Y):
    labelled = (tf.data.Dataset.from_tensor_slices((X, Y))
                .shuffle(len(X), seed=0).batch(BATCH).prefetch(tf.data.AUTOTUNE))
    variants = {}

    a = _student()
    a.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    variants["a"] = (a, {"x": labelled})

    a_arrays = _student()
    a_arrays.compile(optimizer="adam",
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    variants["a_arrays"] = (a_arrays, {"x": X, "y": Y, "batch_size": BATCH})

    def ours(teacher, data, **compile_kwargs):
        d = keras_kd.Distiller(_student(), teacher, temperature=T)
        d.compile(optimizer="adam", **compile_kwargs)
        return d, {"x": data}

    cached_one = keras_kd.cache_teacher_outputs(teachers[0], X, Y, batch_size=BATCH)
    variants["b"] = ours(teachers[0], labelled)
    variants["c"] = ours(teachers[0], cached_one)
    variants["c_xla"] = ours(teachers[0], cached_one, jit_compile=True)
    source = tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH)
    variants["c_dataset"] = ours(teachers[0], keras_kd.cache_teacher_outputs(
        teachers[0], source, batch_size=BATCH))
    outputs = keras_kd.cache.cache_size_bytes(len(X), 10)
    variants["c_streamed"] = ours(teachers[0], keras_kd.cache_teacher_outputs(
        teachers[0], source, batch_size=BATCH, memory_limit_bytes=outputs + 1))

    from keras.distillation import Distiller as KerasDistiller
    from keras.distillation import LogitsDistillation

    d = KerasDistiller(
        teacher=teachers[0], student=_student(),
        distillation_losses=LogitsDistillation(
            temperature=T, loss=keras.losses.KLDivergence()),
        student_loss_weight=0.1)
    d.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    variants["d"] = (d, {"x": labelled})

    cached_three = keras_kd.cache_teacher_outputs(teachers, X, Y, batch_size=BATCH)
    variants["e_uncached"] = ours(teachers, labelled)
    variants["e_cached"] = ours(teachers, cached_three)
    return variants


def setup():
    """`(transfer inputs, the 3 teachers, the variants)`, as timed here."""
    x, y = keras_kd.datasets.load_mnist1d("train")
    X = np.concatenate([x, keras_kd.datasets.load_mnist1d("transfer")])
    Y = np.random.default_rng(0).integers(0, 10, len(X))  # cost only
    teachers = [_teacher(s, x, y) for s in range(3)]
    return X, teachers, build_variants(teachers, X, Y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--output", default=os.path.join(HERE, "results.json"))
    args = parser.parse_args()

    X, teachers, variants = setup()
    load_before = os.getloadavg()

    for model, data in variants.values():  # warm-up: tracing, caches
        model.fit(**data, epochs=1, verbose=0)
    names = list(variants)
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model, data = variants[name]
            start = time.perf_counter()
            model.fit(**data, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(p, q):
        values = [a / b for a, b in zip(times[p], times[q])]
        return {"median": med[p] / med[q], "min": min(values), "max": max(values)}

    ratios = {
        "b/a": ratio("b", "a"), "c/a": ratio("c", "a"),
        "a_arrays/a": ratio("a_arrays", "a"),
        "c_dataset/a": ratio("c_dataset", "a"),
        "c_streamed/a": ratio("c_streamed", "a"),
        "c_xla/c": ratio("c_xla", "c"), "d/c": ratio("d", "c"),
        "b/d": ratio("b", "d"), "e_cached/a": ratio("e_cached", "a"),
        "e_uncached/a": ratio("e_uncached", "a"),
    }
    batch = X[:BATCH]
    latency = {"teacher": [], "student": []}
    for _ in range(args.rounds):  # alternating, 10 timed calls each time
        for name, model in (("teacher", teachers[0]),
                            ("student", variants["c"][0].student)):
            latency[name].append(
                keras_kd.measure.cpu_latency_ms(model, batch, repeats=10))
    teacher_ms = statistics.median(latency["teacher"])
    student_ms = statistics.median(latency["student"])
    report = {
        "command": "python benchmarks/speed.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "output"),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "examples_per_epoch": len(X), "batch_size": BATCH, "rounds": args.rounds,
        "epoch_seconds": {k: spread(v) for k, v in times.items()},
        "ratios": ratios,
        "inference_latency_ms_per_batch": {
            "teacher": teacher_ms, "student": student_ms,
            "student/teacher": student_ms / teacher_ms},
    }
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"load average before/after: {load_before} / {os.getloadavg()}")
    print(f"epoch seconds, median of {args.rounds} (min-max):")
    for k, v in times.items():
        print(f"  {k:<11}{med[k]:7.3f}  ({min(v):.3f}-{max(v):.3f})")
    print("ratios, median (min-max over rounds):")
    for k, r in ratios.items():
        print(f"  {k:<13}{r['median']:6.3f}  ({r['min']:.3f}-{r['max']:.3f})")
    print(f"CPU latency per batch of {BATCH}: teacher {teacher_ms:.3f} ms, "
          f"student {student_ms:.3f} ms ({student_ms / teacher_ms:.3f}x)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
