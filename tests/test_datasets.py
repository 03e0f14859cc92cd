"""Tests of `keras_kd.datasets`: MNIST-1D and the TFDS input pipelines.

All offline: MNIST-1D is generated into a temporary `data_dir`, and the
network probe is replaced wherever a test depends on it.
"""

import http.server
import random
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_kd.datasets as kd_datasets
from keras_kd.datasets import availability
from keras_kd.datasets import mnist1d as mnist1d_module
from keras_kd.datasets import pipeline


def _no_network(*args, **kwargs):
    raise AssertionError("Unexpected network access.")


@pytest.fixture(scope="module")
def make_dataset_output():
    """The canonical data, straight from `mnist1d.data.make_dataset`."""
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    # `make_dataset` seeds the global RNGs: spare the other tests.
    with mnist1d_module._preserved_global_rng():
        return make_dataset(get_dataset_args())


@pytest.fixture(scope="module")
def data_dir(mnist1d_data_dir):
    return mnist1d_data_dir


def _collect(dataset):
    """Concatenates the batches of a pipeline into numpy arrays."""
    batches = list(dataset.as_numpy_iterator())
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(part) for part in zip(*batches))
    return np.concatenate(batches)


def test_reimplementation_matches_make_dataset(make_dataset_output):
    expected = make_dataset_output
    # float64, normalised with the constants recovered from the raw data.
    x, y, _, _ = mnist1d_module._canonical()
    np.testing.assert_array_equal(
        x, np.concatenate([expected["x"], expected["x_test"]])
    )
    np.testing.assert_array_equal(
        y, np.concatenate([expected["y"], expected["y_test"]])
    )


def test_load_mnist1d_is_canonical(make_dataset_output):
    expected = make_dataset_output
    for split, x_key, y_key in (
        ("train", "x", "y"),
        ("test", "x_test", "y_test"),
    ):
        x, y = kd_datasets.load_mnist1d(split)
        assert x.dtype == np.float32 and x.shape == (len(expected[y_key]), 40)
        np.testing.assert_array_equal(x, expected[x_key].astype(np.float32))
        np.testing.assert_array_equal(y, expected[y_key])
    assert len(expected["y"]) == 4000 and len(expected["y_test"]) == 1000


def test_tfds_load_is_canonical_and_offline(
    data_dir, make_dataset_output, monkeypatch
):
    monkeypatch.setattr(socket, "create_connection", _no_network)
    expected = make_dataset_output
    for split, x_key, y_key in (
        ("train", "x", "y"),
        ("test", "x_test", "y_test"),
    ):
        data = tfds.load(
            "mnist1d", split=split, data_dir=data_dir, batch_size=-1
        )
        np.testing.assert_array_equal(
            data["x"], expected[x_key].astype(np.float32)
        )
        np.testing.assert_array_equal(data["label"], expected[y_key])
    info = tfds.builder("mnist1d", data_dir=data_dir).info
    assert "Greydanus" in info.citation and "Kobak" in info.citation
    assert info.homepage == "https://github.com/greydanus/mnist1d"


def test_transfer_split(data_dir):
    x = kd_datasets.load_mnist1d("transfer")
    assert isinstance(x, np.ndarray) and x.shape == (25_000, 40)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1.0) < 0.05
    train_x, _ = kd_datasets.load_mnist1d("train")
    train_rows = {row.tobytes() for row in train_x}
    assert not any(row.tobytes() in train_rows for row in x)

    spec = "transfer[:2000]"  # Reading all 25,000 takes seconds.
    data = kd_datasets.load(
        "mnist1d", splits=spec, data_dir=data_dir, batch_size=500
    )
    assert data.num_examples == {spec: 2000}
    assert isinstance(data[spec].element_spec, tf.TensorSpec)
    np.testing.assert_array_equal(_collect(data[spec]), x[:2000])
    labels = tfds.load("mnist1d", split=spec, data_dir=data_dir, batch_size=-1)[
        "label"
    ]
    assert set(labels.numpy()) == {-1}


def test_load_pipelines(data_dir, make_dataset_output):
    data = kd_datasets.load("mnist1d", data_dir=data_dir, batch_size=512)
    assert data.name == "mnist1d" and data.num_classes == 10
    assert data.input_shape == (40,)
    assert data.num_examples == {"train": 4000, "test": 1000}
    x_spec, y_spec = data["train"].element_spec
    assert x_spec.dtype == tf.float32 and x_spec.shape.as_list() == [None, 40]
    assert y_spec.dtype == tf.int64
    # Float inputs are left as they are; `test` is not shuffled.
    x_test, y_test = _collect(data["test"])
    np.testing.assert_array_equal(
        x_test, make_dataset_output["x_test"].astype(np.float32)
    )
    np.testing.assert_array_equal(y_test, make_dataset_output["y_test"])
    # `train` is shuffled, each epoch anew.
    first, second = _collect(data["train"]), _collect(data["train"])
    assert not np.array_equal(first[1], make_dataset_output["y"])
    assert not np.array_equal(first[1], second[1])
    np.testing.assert_array_equal(
        np.sort(first[1]), np.sort(make_dataset_output["y"])
    )


def test_transfer_set(data_dir):
    dataset = kd_datasets.transfer_set(
        "mnist1d", data_dir=data_dir, batch_size=1000
    )
    assert isinstance(dataset.element_spec, tf.TensorSpec)
    x = _collect(dataset)
    assert x.shape == (29_000, 40)
    train_x, _ = kd_datasets.load_mnist1d("train")
    # Shuffled across train and transfer: train rows are spread out.
    train_rows = {row.tobytes() for row in train_x}
    in_train = np.array([row.tobytes() in train_rows for row in x])
    assert in_train.sum() == 4000 and in_train[:1000].sum() < 500


def test_transfer_set_in_fixed_order(data_dir):
    # The order `cache_teacher_outputs` needs: train, then transfer, every pass.
    dataset = kd_datasets.transfer_set("mnist1d", data_dir=data_dir, batch_size=1000, shuffle=False)
    expected = np.concatenate([kd_datasets.load_mnist1d("train")[0], kd_datasets.load_mnist1d("transfer")])
    for _ in range(2):
        np.testing.assert_array_equal(_collect(dataset), expected)


def test_partial_first_read_keeps_every_example(data_dir):
    # A lazily filled `Dataset.cache()` whose first read is partial kept,
    # in about half the tries, only the part read (~130 of 1,000 examples).
    for attempt in range(12):
        test = kd_datasets.load("mnist1d", splits="test", data_dir=data_dir)
        if attempt % 2:
            next(iter(test["test"]))
        else:
            for _ in test["test"].take(1):
                pass
        assert len(_collect(test["test"])[0]) == 1000, attempt
    transfer = kd_datasets.transfer_set("mnist1d", data_dir=data_dir)
    next(iter(transfer))
    assert len(_collect(transfer)) == 29_000


def test_uint8_inputs_scaled_once():
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    labels = np.arange(4)
    for elements in ((images, labels), images):
        dataset = tf.data.Dataset.from_tensor_slices(elements)
        dataset = pipeline._make_pipeline(
            dataset, batch_size=4, shuffle_buffer=0, seed=0
        )
        outputs = _collect(dataset)
        x = outputs[0] if isinstance(outputs, tuple) else outputs
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)
        assert x.max() == 1.0


def test_float_inputs_untouched():
    x = np.linspace(-3.0, 300.0, 24, dtype=np.float32).reshape(6, 4)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(6)))
    dataset = pipeline._make_pipeline(
        dataset, batch_size=4, shuffle_buffer=0, seed=0
    )
    np.testing.assert_array_equal(_collect(dataset)[0], x)


def test_unavailable_dataset_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(availability, "network_available", lambda: False)
    start = time.monotonic()
    with pytest.raises(kd_datasets.DatasetNotAvailableError) as error:
        kd_datasets.load("mnist", data_dir=tmp_path)
    assert time.monotonic() - start < 5.0
    message = str(error.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "network" in message

    monkeypatch.setattr(availability, "network_available", _no_network)
    with pytest.raises(
        kd_datasets.DatasetNotAvailableError, match="download=False"
    ):
        kd_datasets.load("mnist", data_dir=tmp_path, download=False)


def test_network_probe(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    server = http.server.HTTPServer(
        ("127.0.0.1", 0), http.server.BaseHTTPRequestHandler
    )
    url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        # Answers `HEAD` with "501 Unsupported method": reachable all the same.
        assert kd_datasets.network_available(url, timeout=2.0)
    finally:
        thread.join(2.0)
        server.server_close()
    start = time.monotonic()
    assert not kd_datasets.network_available(url, timeout=1.0)
    assert time.monotonic() - start < 2.0


def test_unknown_names():
    with pytest.raises(ValueError, match="mnist1d.*Received: name='mnist_1d'"):
        kd_datasets.load("mnist_1d")
    with pytest.raises(ValueError, match="split"):
        kd_datasets.load_mnist1d("validation")


def test_unknown_split(data_dir):
    with pytest.raises(ValueError, match="Received: split='validation'"):
        kd_datasets.load("mnist1d", splits=("validation",), data_dir=data_dir)


def test_global_rng_state_unchanged():
    np.random.seed(123)
    random.seed(123)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    mnist1d_module._generate_raw(20, seed=7)
    kd_datasets.load_mnist1d("test")
    after = np.random.get_state()
    assert after[0] == numpy_state[0]
    np.testing.assert_array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert random.getstate() == python_state


def test_builder_registered():
    assert "mnist1d" in tfds.list_builders(with_community_datasets=False)
    assert "mnist1d" in kd_datasets.EMBEDDED
