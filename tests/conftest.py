"""Shared test helpers: tiny models, tiny data, a serialization round trip."""

import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import keras_kd  # noqa: E402,F401  (registers the mnist1d builder)


def tiny_model(inputs=8, classes=3, hidden=16, *, seed=0, norm=False,
               softmax=False, name=None):
    """A small Dense classifier that outputs logits (or probabilities)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs,)), keras.layers.Dense(hidden, activation="relu")]
    if norm:
        layers += [keras.layers.BatchNormalization(), keras.layers.Dropout(0.5)]
    layers.append(
        keras.layers.Dense(classes, activation="softmax" if softmax else None)
    )
    return keras.Sequential(layers, name=name)


def tiny_data(n=71, inputs=8, classes=3, *, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = rng.integers(0, classes, size=(n,))
    return x, y


def numpy_soft_loss(teacher_logits, student_logits, temperature):
    """T^2 KL(softmax(t/T) || softmax(s/T)) per row, in float64 numpy."""
    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64) / temperature
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lt, ls = log_softmax(teacher_logits), log_softmax(student_logits)
    return temperature**2 * (np.exp(lt) * (lt - ls)).sum(axis=-1)


def numpy_sparse_ce(logits, labels):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def roundtrip(obj, tmp_path):
    """get_config -> from_config, and save -> load_model for models.

    Returns the reloaded object (from the `.keras` file for models).
    """
    clone = obj.__class__.from_config(obj.get_config())
    assert clone.get_config() == obj.get_config()
    if not isinstance(obj, keras.Model):
        return clone
    path = str(tmp_path / "roundtrip.keras")
    obj.save(path)
    return keras.saving.load_model(path)


@pytest.fixture
def models():
    """A trained-looking teacher (BN + dropout) and a fresh student."""
    teacher = tiny_model(hidden=32, seed=1, norm=True, name="teacher")
    student = tiny_model(hidden=4, seed=2, name="student")
    return teacher, student


def _no_network(*args, **kwargs):
    raise AssertionError("Unexpected network access.")


@pytest.fixture(scope="session")
def mnist1d_data_dir(tmp_path_factory):
    """A TFDS data_dir where MNIST-1D is prepared, all network use failing.

    Prepared once per test session (about 20 s) and shared by every test.
    """
    path = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "create_connection", _no_network)
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "getaddrinfo", _no_network)
        tfds.builder("mnist1d", data_dir=path).download_and_prepare()
    return path


def snapshot(model):
    """Copies of all of `model`'s variables (BN statistics, seeds included)."""
    return [(v.path, v.numpy().copy()) for v in model.variables]


def assert_unchanged(before, model):
    """Asserts `model`'s variables are bit-identical to a `snapshot`."""
    after = snapshot(model)
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, old), (_, new) in zip(before, after):
        np.testing.assert_array_equal(old, new, err_msg=path)


def fixed_logits_model(weights, *, softmax=False, name=None):
    """A teacher whose pre-softmax logits are `x @ weights` (no bias)."""
    weights = np.asarray(weights, dtype="float32")
    model = keras.Sequential(
        [
            keras.Input((weights.shape[0],)),
            keras.layers.Dense(
                weights.shape[1], use_bias=False,
                activation="softmax" if softmax else None,
            ),
        ],
        name=name,
    )
    model.layers[-1].set_weights([weights])
    return model


def json_config(model):
    """`model.get_config()` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(model.get_config()))


class _Counts:
    """Holds the counter outside Keras' tracking (not a model weight)."""

    def __init__(self):
        self.runs = tf.Variable(0, dtype="int64", trainable=False)


class CallCounter(keras.layers.Layer):
    """Identity layer that counts its calls.

    `traces` is a Python counter, incremented each time `call` runs as
    Python (once per trace inside a `tf.function`); `counts.runs` is a
    `tf.Variable` incremented by every executed call, traced or eager.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.traces = 0
        self.counts = _Counts()

    def call(self, x):
        self.traces += 1
        self.counts.runs.assign_add(1)
        return x


def counting_teacher():
    """A tiny teacher whose every call is counted by a `CallCounter`."""
    keras.utils.set_random_seed(1)
    counter = CallCounter()
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(32, activation="relu")(counter(inputs))
    teacher = keras.Model(inputs, keras.layers.Dense(3)(hidden), name="teacher")
    counter.traces = 0  # The symbolic call that built the model.
    return teacher, counter
