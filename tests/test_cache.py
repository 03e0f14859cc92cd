import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import counting_teacher, tiny_data, tiny_model

import keras_kd  # noqa: F401
from keras_kd import training
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
    cost = r"64 examples x 1 teacher\(s\) x 3 classes x 4 bytes = 768 bytes.*memory_limit_bytes=500"
    known = tf.data.Dataset.from_tensor_slices(x).batch(16, drop_remainder=True)
    for data in (x, known):  # refused before the teacher pass
        with pytest.raises(ValueError, match=cost):
            cache_teacher_outputs(tiny_model(), data, memory_limit_bytes=500)
    # Known cardinality, batch dimension None: refused after the first
    # batch, once a count without the teacher confirms the estimate.
    batched = tf.data.Dataset.from_tensor_slices(x).batch(16)
    with pytest.raises(ValueError, match=cost):
        cache_teacher_outputs(tiny_model(), batched, memory_limit_bytes=500)
    # A large first batch, then small ones: 16 + 6 x 8 = 64 examples fit in
    # 800 bytes, though 7 batches of 16 would not.
    uneven = tf.data.Dataset.from_tensor_slices(x[:16]).batch(16).concatenate(
        tf.data.Dataset.from_tensor_slices(x[16:]).batch(8))
    cache_teacher_outputs(tiny_model(), uneven, memory_limit_bytes=800)
    # Unknown size: refused once the examples seen so far (3 x 16 = 48,
    # 576 bytes) exceed the limit.
    unknown = batched.filter(lambda _: True)
    with pytest.raises(ValueError, match=r"size is unknown, and its first 48 examples.* = 576 bytes"):
        cache_teacher_outputs(tiny_model(), unknown, memory_limit_bytes=500)


def test_empty_dataset_is_refused():
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 8), "float32")).batch(4)
    with pytest.raises(ValueError, match="empty dataset"):
        cache_teacher_outputs(tiny_model(), empty)


def _cached(source, teacher, x, y, w):
    """The cache over arrays, or over a dataset held in memory or streamed."""
    if source == "arrays":
        return cache_teacher_outputs(teacher, x, y, sample_weight=w, batch_size=32,
                                     shuffle=False)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)
    num_teachers = len(teacher) if isinstance(teacher, list) else 1
    outputs = len(x) * num_teachers * 3 * 4  # bytes of float32 logits
    # Streamed: room for the outputs, not for the examples as well.
    limit = outputs + 1 if source == "streamed dataset" else 2**31
    return cache_teacher_outputs(teacher, dataset, batch_size=32, shuffle=False,
                                 memory_limit_bytes=limit)


@pytest.mark.parametrize("source", ["arrays", "dataset in memory", "streamed dataset"])
@pytest.mark.parametrize("num_teachers", [1, 3])
def test_cached_training_equals_uncached(num_teachers, source):
    x, y = tiny_data(n=96)
    w = np.linspace(0.5, 2, 96).astype("float32")
    teachers = [tiny_model(seed=10 + i, hidden=24, norm=True) for i in range(num_teachers)]
    teacher = teachers[0] if num_teachers == 1 else teachers
    histories, weights = [], []
    for data in (
        tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32),
        _cached(source, teacher, x, y, w),
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


def test_lazily_cached_dataset_is_not_truncated(mnist1d_data_dir):
    # The determinism probe reads one batch again; made before the teacher
    # pass, such a partial read truncated a lazily filled `Dataset.cache()`
    # (to ~130 of 1,000 examples, in about half the tries).
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist1d", data_dir=mnist1d_data_dir)
    teacher = keras_kd.models.mlp_student((40,), 10)
    for _ in range(6):
        lazily = builder.as_dataset(split="test", as_supervised=True).cache().batch(128)
        cached = cache_teacher_outputs(teacher, lazily, batch_size=128, shuffle=False)
        for epoch in range(2):
            labels = [batch[1]["labels"] for batch in cached.as_numpy_iterator()]
            assert len(np.concatenate(labels)) == 1000


def test_verbose_shows_the_teacher_pass(capsys):
    x, y = tiny_data(n=64)
    cache_teacher_outputs(tiny_model(), x, y, batch_size=16, verbose=1)
    assert "4/4" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Received: verbose=2"):
        cache_teacher_outputs(tiny_model(), x, y, verbose=2)


@pytest.mark.parametrize("limit, reads_per_epoch", [(2**31, 0), (71 * 3 * 4 + 1, 71)])
def test_dataset_is_held_in_memory_when_it_fits(limit, reads_per_epoch):
    # Examples and outputs fit: later epochs gather from memory and never
    # read the source. Room for the outputs only: every epoch reads it.
    x, y = tiny_data()
    reads = []
    source = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda a, b: (tf.py_function(lambda v: reads.append(1) or v, [a], tf.float32), b)
    ).map(lambda a, b: (tf.ensure_shape(a, (8,)), b)).batch(16)
    cached = cache_teacher_outputs(tiny_model(), source, batch_size=16, memory_limit_bytes=limit)
    reads.clear()
    got_x, got_y, _ = _collect(cached)
    assert len(reads) == reads_per_epoch
    order = np.lexsort(got_x.T)  # same examples, labels still attached
    np.testing.assert_array_equal(got_x[order], x[np.lexsort(x.T)])
    np.testing.assert_array_equal(got_y[order], y[np.lexsort(x.T)])


def test_ready_made_distill_runs_the_teacher_once_with_cache():
    x, _ = tiny_data(n=96)
    validation = tf.data.Dataset.from_tensor_slices(tiny_data(n=32, seed=1)).batch(32)
    transfer = tf.data.Dataset.from_tensor_slices(x).batch(32)  # 3 batches
    runs = []
    for cache in (True, False):
        teacher, counter = counting_teacher()
        _, history = training.distill(teacher, tiny_model(seed=2), transfer, epochs=3,
                                      validation_data=validation, verbose=0, cache=cache)
        assert len(history.history["val_accuracy"]) == 3
        runs.append(int(counter.counts.runs.numpy()))
    # Cached: one pass over 3 + 1 batches. Uncached: every batch of every epoch.
    assert runs == [3 + 1, 3 * (3 + 1)]
    with pytest.raises(ValueError, match="shuffled or randomly augmented"):
        training.distill(teacher, tiny_model(seed=2), transfer.unbatch().shuffle(96).batch(32),
                         epochs=1, verbose=0, cache=True)


def test_batch_size_defaults_to_the_datasets_own():
    x, y = tiny_data(n=40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    sizes = [len(b[0]) for b in cache_teacher_outputs(tiny_model(), dataset, shuffle=False)]
    assert sizes == [16, 16, 8]
    sizes = [len(b[0]) for b in cache_teacher_outputs(tiny_model(), x, y, shuffle=False)]
    assert sizes == [40]  # arrays: 256 at most
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        cache_teacher_outputs(tiny_model(), x, y, batch_size=0)


def _softmax_on_top(model):
    # A softmax the static check cannot see (an op, not a layer's activation).
    return keras.Model(model.inputs, keras.activations.softmax(model.outputs[0]))


def _one_shot(x):
    examples = iter(x.reshape(-1, 16, 8))
    return tf.data.Dataset.from_generator(
        lambda: examples, output_signature=tf.TensorSpec((16, 8), "float32"))


def _shuffled_after_batch_2(x):
    ds = tf.data.Dataset.from_tensor_slices(x)
    return ds.take(32).concatenate(ds.skip(32).shuffle(32, seed=1)).batch(16)


def _pooled():
    inputs = keras.Input((None,))
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((-1, 1))(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(pooled))


def _padded():
    lengths = tf.data.Dataset.from_tensor_slices([3, 3, 5, 5])
    return lengths.map(lambda n: tf.ones([n])).padded_batch(2)


def _swapping():
    # One-hot rows; on every other pass two rows of batch 3 swap places, which
    # keeps the batch's sums, even its position-weighted sums.
    one_hot = np.eye(8, dtype="float32")[np.arange(64) % 8]
    passes = itertools.count()

    def batches():
        swap = next(passes) % 2
        for i in range(4):
            batch = one_hot[16 * i:16 * (i + 1)].copy()
            if swap and i == 2:
                batch[[0, 1]] = batch[[1, 0]]
            yield batch

    return tf.data.Dataset.from_generator(
        batches, output_signature=tf.TensorSpec((16, 8), "float32"))


def _nondeterministic(x):
    options = tf.data.Options()
    options.deterministic = False
    return tf.data.Dataset.from_tensor_slices(x).batch(16).with_options(options)


class _Batches(keras.utils.PyDataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return X8


X8 = tiny_data(n=64)[0]
BAD = [
    ("no teacher", lambda: cache_teacher_outputs([], X8), r"Received: teacher=\[\]"),
    ("teacher path", lambda: cache_teacher_outputs("t.keras", X8), r"Received: teacher='t.keras'"),
    ("teacher_outputs typo", lambda: cache_teacher_outputs(tiny_model(), X8, teacher_outputs="probabilites"),
     r"Received: teacher_outputs='probabilites'"),
    ("memory limit None", lambda: cache_teacher_outputs(tiny_model(), X8, memory_limit_bytes=None),
     r"Received: memory_limit_bytes=None"),
    ("memory limit -1", lambda: cache_teacher_outputs(tiny_model(), X8, memory_limit_bytes=-1),
     r"Received: memory_limit_bytes=-1"),
    ("shuffle_buffer 0", lambda: cache_teacher_outputs(tiny_model(), X8, shuffle_buffer=0),
     r"Received: shuffle_buffer=0"),
    ("x None", lambda: cache_teacher_outputs(tiny_model(), None), r"Received: x=None"),
    ("y too short", lambda: cache_teacher_outputs(tiny_model(), X8, np.zeros(40, "int64")),
     r"one entry per example of `x` \(64\)\. Received: y of length 40"),
    ("sample_weight too long", lambda: cache_teacher_outputs(tiny_model(), X8, sample_weight=np.ones(65)),
     r"Received: sample_weight of length 65"),
    ("unbatched", lambda: cache_teacher_outputs(tiny_model(), tf.data.Dataset.from_tensor_slices(X8)),
     r"call `.batch\(...\)`.*Received: x=an unbatched"),
    ("already cached", lambda: cache_teacher_outputs(tiny_model(), cache_teacher_outputs(tiny_model(), X8)),
     r"already carries cached teacher outputs"),
    ("one-shot generator", lambda: cache_teacher_outputs(tiny_model(), _one_shot(X8)),
     r"can be iterated only once"),
    ("shuffled after batch 2", lambda: cache_teacher_outputs(tiny_model(), _shuffled_after_batch_2(X8)),
     r"batch 3 differs on a second pass"),
    ("infinite dataset", lambda: cache_teacher_outputs(
        tiny_model(), tf.data.Dataset.from_tensor_slices(X8).repeat().batch(16)),
     r"Received: x=an infinite tf.data.Dataset"),
    ("seed 1.5", lambda: cache_teacher_outputs(tiny_model(), X8, seed=1.5), r"Received: seed=1.5"),
    ("x a file name", lambda: cache_teacher_outputs(tiny_model(), "data.npy"), r"Received: x of type str"),
    ("varying shapes", lambda: cache_teacher_outputs(_pooled(), _padded()),
     r"batch 2 has shape \(2, 5\) after \(2, 3\).*padded_shapes"),
    ("ensemble of other classes", lambda: cache_teacher_outputs(
        [tiny_model(), tiny_model(classes=4)], X8), r"Received: teachers with \[3, 4\] classes"),
    ("rows swapped in a batch", lambda: cache_teacher_outputs(tiny_model(), _swapping()),
     r"batch 3 differs on a second pass"),
    ("nondeterministic options", lambda: cache_teacher_outputs(tiny_model(), _nondeterministic(X8)),
     r"Received: x with options\(\).deterministic=False"),
    ("PyDataset", lambda: cache_teacher_outputs(tiny_model(), _Batches()), r"Received: x of type _Batches"),
    ("undetected softmax", lambda: cache_teacher_outputs(_softmax_on_top(tiny_model()), X8),
     r"look like probabilities.*teacher_outputs='probabilities'"),
]


@pytest.mark.parametrize("action, pattern", [r[1:] for r in BAD], ids=[r[0] for r in BAD])
def test_bad_input_is_named(action, pattern):
    with pytest.raises(ValueError, match=pattern):
        action()


def test_class_weight_applies_to_cached_labels():
    x, y = tiny_data(n=64)
    teacher, weights = tiny_model(seed=1), {0: 0.5, 1: 2.0, 2: 1.0}
    runs = []
    for data in (  # class weights, or the per-example weights they stand for
        (cache_teacher_outputs(teacher, x, y, batch_size=16, shuffle=False), weights),
        (cache_teacher_outputs(teacher, x, y, sample_weight=np.vectorize(weights.get)(y),
                               batch_size=16, shuffle=False), None),
    ):
        distiller = keras_kd.Distiller(tiny_model(seed=2), teacher, alpha=0.5)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        runs.append(distiller.fit(data[0], class_weight=data[1], epochs=2, verbose=0).history)
    np.testing.assert_allclose(runs[0]["loss"], runs[1]["loss"], rtol=1e-6)


def test_ready_made_distill_names_the_data_it_refuses():
    x, y = tiny_data()
    fixed = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(71).batch(16)
    with pytest.raises(ValueError, match=r"`validation_data` to give the same inputs.*Received: validation_data="):
        training.distill(tiny_model(seed=1), tiny_model(seed=2), fixed, epochs=1,
                         validation_data=shuffled, cache=True, verbose=0)


def test_fixed_data_with_nan_and_subclassed_teachers_are_cached():
    class Sub(keras.Model):  # no `output_shape` to read before it runs
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    x = tiny_data(n=64)[0].copy()
    x[5, 0] = np.nan  # a NaN is the same on every pass, not a change
    teacher = Sub()
    cached = cache_teacher_outputs(teacher, tf.data.Dataset.from_tensor_slices(x).batch(16),
                                   shuffle=False, memory_limit_bytes=10**6)
    z = np.concatenate([t["teacher_logits"][:, 0] for _, t in cached])
    np.testing.assert_allclose(z, teacher(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"64 examples x 1 teacher\(s\) x 3 classes"):
        cache_teacher_outputs(teacher, x, memory_limit_bytes=100)


def test_ready_made_distill_caches_array_validation_data():
    x, y = tiny_data()
    fixed = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    distiller, history = training.distill(tiny_model(seed=1), tiny_model(seed=2), fixed, epochs=1,
                                          validation_data=(x, y), cache=True, verbose=0)
    assert np.isfinite(history.history["val_loss"]).all()


def test_batch_digest_sees_ragged_and_sparse_rows_move():
    from keras_kd.cache import _fingerprint

    rows = np.arange(1500, dtype="float32").reshape(300, 5)  # too many for repr()
    swapped = rows[np.r_[0:150, 151, 150, 152:300]]
    assert _fingerprint(tf.ragged.constant(rows)) == _fingerprint(tf.ragged.constant(rows.copy()))
    assert _fingerprint(tf.ragged.constant(rows)) != _fingerprint(tf.ragged.constant(swapped))
    eye = tf.sparse.from_dense(np.eye(700, dtype="float32"))
    moved = tf.sparse.from_dense(np.eye(700, dtype="float32")[::-1])
    assert _fingerprint(eye) != _fingerprint(moved)


def test_a_masking_teacher_is_flagged():
    inputs = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(3)(embedded))  # per position, masked
    tokens = np.random.default_rng(0).integers(0, 10, (32, 6)).astype("int32")
    with pytest.warns(UserWarning, match="carry a Keras mask"):
        cache_teacher_outputs(teacher, tokens)
