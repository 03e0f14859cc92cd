"""What the demo reports about a model: accuracy, size and CPU latency."""

import os
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf


def accuracy(model, dataset):
    """Top-1 accuracy of `model` over a batched `(x, y)` dataset.

    Args:
        model: A `keras.Model` that outputs logits or probabilities.
        dataset: A batched `tf.data.Dataset` of `(x, y)`.

    Returns:
        A Python float in [0, 1].
    """
    correct = total = 0
    for x, y in dataset:
        logits = keras.ops.convert_to_numpy(model(x, training=False))
        pred = np.argmax(logits, axis=-1)
        correct += int(np.sum(pred == keras.ops.convert_to_numpy(y)))
        total += len(pred)
    if total == 0:
        raise ValueError("Expected a dataset with at least one sample. Received: an empty dataset")
    return correct / total


def saved_size_bytes(model):
    """Size in bytes of `model` saved alone as a `.keras` file.

    A compiled model is measured without its optimizer state (as it would
    be deployed), through an uncompiled copy with the same weights.
    """
    if getattr(model, "optimizer", None) is not None:
        try:
            copy = model.__class__.from_config(model.get_config())
            copy.set_weights(model.get_weights())
            model = copy
        except Exception:  # Subclassed models may not clone: measure as is.
            pass
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return os.path.getsize(path)


def cpu_latency_ms(model, batch, repeats=30, warmup=3):
    """Median CPU wall time, in ms, of one inference call on `batch`.

    The call is wrapped in `tf.function` (as `predict` does) and run on the
    CPU; the median over `repeats` timed calls is returned.

    Args:
        model: A `keras.Model`.
        batch: One batch of inputs.
        repeats: Number of timed calls.
        warmup: Untimed calls first (tracing, caches).

    Returns:
        The median latency in milliseconds.
    """
    with tf.device("/CPU:0"):
        batch = tf.convert_to_tensor(batch)
        forward = tf.function(lambda x: model(x, training=False))
        for _ in range(warmup):
            forward(batch).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(batch).numpy()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def describe(model, test_dataset, latency_batch):
    """The demo's record of one model.

    Args:
        model: A `keras.Model`.
        test_dataset: A batched `(x, y)` dataset for accuracy.
        latency_batch: One batch of inputs for the latency measurement.

    Returns:
        A dict with `test_accuracy`, `params`, `size_bytes`, `latency_ms`.
    """
    return {
        "test_accuracy": accuracy(model, test_dataset),
        "params": int(model.count_params()),
        "size_bytes": saved_size_bytes(model),
        "latency_ms": cpu_latency_ms(model, latency_batch),
    }
