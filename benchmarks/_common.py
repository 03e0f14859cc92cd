"""Helpers shared by the benchmark scripts (not part of the package)."""

import gzip
import os
import statistics

import numpy as np

SHARED_MNIST = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "mnist-t10k"
)


def load_mnist_t10k(folder=SHARED_MNIST):
    """The real MNIST test set, split as its README fixes: even indices
    train (5,000), odd indices test (5,000). Returns None when absent."""
    images = os.path.join(folder, "t10k-images-idx3-ubyte.gz")
    labels = os.path.join(folder, "t10k-labels-idx1-ubyte.gz")
    if not (os.path.exists(images) and os.path.exists(labels)):
        return None
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype("int64")
    x = x.astype("float32") / 255.0
    return {
        "train": (x[0::2], y[0::2]),
        "test": (x[1::2], y[1::2]),
    }


def mean_std(values):
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "values": values}


def spread(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }
