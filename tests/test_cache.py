import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_data, tiny_model

import keras_kd  # noqa: F401
from keras_kd.cache import cache_size_bytes, cache_teacher_outputs


def _collect(dataset):
    batches = list(dataset.as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches])
    z = np.concatenate([b[1]["teacher_logits"] for b in batches])
    y = np.concatenate([b[1]["labels"] for b in batches]) if "labels" in batches[0][1] else None
    return x, y, z


def test_cache_holds_each_teachers_logits_in_order():
    x, y = tiny_data()
    teachers = [tiny_model(seed=1), tiny_model(seed=2, softmax=True)]
    got_x, got_y, got_z = _collect(cache_teacher_outputs(teachers, x, y, batch_size=32, shuffle=False))
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert got_z.shape == (71, 2, 3)
    np.testing.assert_allclose(got_z[:, 0], teachers[0].predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    # The softmax teacher is stored as log-probabilities: softmax gives its outputs back.
    probs = np.exp(got_z[:, 1]) / np.exp(got_z[:, 1]).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, teachers[1].predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_shuffled_cache_keeps_inputs_and_targets_together():
    x, _ = tiny_data()
    teacher = tiny_model(seed=1)
    got_x, got_y, got_z = _collect(cache_teacher_outputs(teacher, x, batch_size=16, seed=3))
    assert got_y is None
    assert not np.array_equal(got_x, x)  # shuffled ...
    np.testing.assert_allclose(got_z[:, 0], teacher.predict(got_x, verbose=0), rtol=1e-5, atol=1e-6)


def test_shuffled_or_augmented_source_is_refused():
    x, _ = tiny_data()
    shuffled = tf.data.Dataset.from_tensor_slices(x).shuffle(71).batch(16)
    with pytest.raises(ValueError, match="shuffled or randomly augmented"):
        cache_teacher_outputs(tiny_model(), shuffled)
    noise = tf.random.Generator.from_seed(0)  # advances across passes
    noisy = tf.data.Dataset.from_tensor_slices(x).batch(16).map(
        lambda b: b + noise.normal(tf.shape(b))
    )
    with pytest.raises(ValueError, match="shuffled or randomly augmented"):
        cache_teacher_outputs(tiny_model(), noisy)


def test_memory_guard_says_what_the_cache_costs():
    assert cache_size_bytes(29_000, 10) == 29_000 * 10 * 4
    x, _ = tiny_data(n=64)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16)
    with pytest.raises(ValueError, match=r"64 examples x 1 teacher\(s\) x 3 classes x 4 bytes = 768 bytes.*memory_limit_bytes=500"):
        cache_teacher_outputs(tiny_model(), dataset, memory_limit_bytes=500)


def test_empty_dataset_is_refused():
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 8), "float32")).batch(4)
    with pytest.raises(ValueError, match="empty dataset"):
        cache_teacher_outputs(tiny_model(), empty)


@pytest.mark.parametrize("num_teachers", [1, 3])
def test_cached_training_equals_uncached(num_teachers):
    x, y = tiny_data(n=96)
    teachers = [tiny_model(seed=10 + i, hidden=24, norm=True) for i in range(num_teachers)]
    teacher = teachers[0] if num_teachers == 1 else teachers
    histories, weights = [], []
    for data in (
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
        cache_teacher_outputs(teacher, x, y, batch_size=32, shuffle=False),
    ):
        distiller = keras_kd.Distiller(tiny_model(seed=2), teacher, temperature=3.0, alpha=0.3)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
        h = distiller.fit(data, epochs=3, verbose=0, validation_data=data)
        histories.append(h.history)
        weights.append(distiller.student.get_weights())
    assert set(histories[0]) == set(histories[1])
    for key in histories[0]:
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-5, err_msg=key)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cache_from_other_teachers_is_refused():
    x, y = tiny_data()
    data = cache_teacher_outputs([tiny_model(seed=1), tiny_model(seed=3)], x, y)
    distiller = keras_kd.Distiller(tiny_model(seed=2), tiny_model(seed=1))
    distiller.compile()
    with pytest.raises(ValueError, match=r"2 teacher\(s\), but this Distiller has 1"):
        distiller.fit(data, verbose=0)
