"""Teacher-output cache: run the teacher once over a fixed transfer set.

For a fixed, non-augmented dataset the teacher's outputs never change, so
they can be computed once and fed to the `Distiller` with each batch; later
epochs (and keras-tuner trials) then cost what training the student alone
costs.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_kd import losses as kd_losses

TEACHER_LOGITS = "teacher_logits"
LABELS = "labels"

# Above this many bytes of teacher outputs, `cache_teacher_outputs` refuses.
DEFAULT_MEMORY_LIMIT_BYTES = 2 * 1024**3


def cache_size_bytes(num_examples, num_classes, num_teachers=1):
    """Bytes the cache holds: examples x teachers x classes x 4 (float32)."""
    return int(num_examples) * int(num_teachers) * int(num_classes) * 4


def is_cached_batch(y):
    """Whether a batch's `y` carries cached teacher outputs (static check)."""
    return isinstance(y, dict) and TEACHER_LOGITS in y


def _as_dataset(x, y, batch_size):
    """Unbatched-order, batched dataset over arrays, or the dataset as is."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(
                "Pass `y` only with array inputs; a dataset carries its own "
                f"labels. Received: y of type {type(y).__name__}"
            )
        return x
    x = np.asarray(x)
    items = x if y is None else (x, np.asarray(y))
    return tf.data.Dataset.from_tensor_slices(items).batch(batch_size)


def _split(batch):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    return x, y, sample_weight


def _first_inputs(dataset):
    for batch in dataset.take(1):
        return _split(batch)[0]
    raise ValueError(
        "Expected a dataset with at least one batch to cache teacher "
        "outputs for. Received: an empty dataset"
    )


def _check_memory(num_examples, num_classes, teachers, limit):
    size = cache_size_bytes(num_examples, num_classes, len(teachers))
    if size > limit:
        raise ValueError(
            "The teacher-output cache would exceed its memory limit: "
            f"{num_examples} examples x {len(teachers)} teacher(s) x "
            f"{num_classes} classes x 4 bytes = {size} bytes. Distil without "
            "a cache, use fewer examples, or raise the limit. Received: "
            f"memory_limit_bytes={limit}"
        )


def _check_deterministic(dataset):
    """Refuses a dataset whose inputs differ between two passes."""
    first, second = _first_inputs(dataset), _first_inputs(dataset)
    same = all(
        a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second))
    )
    if not same:
        raise ValueError(
            "The dataset gives different inputs on two passes (it is "
            "shuffled or randomly augmented), so cached teacher outputs "
            "would not match the student's inputs. Cache the fixed, "
            "unshuffled data and shuffle with `shuffle=True` here; with "
            "random augmentation, distil without a cache so that the "
            "teacher sees the same augmented inputs as the student."
        )


def cache_teacher_outputs(
    teacher,
    x,
    y=None,
    *,
    batch_size=256,
    shuffle=True,
    shuffle_buffer=50_000,
    seed=0,
    memory_limit_bytes=DEFAULT_MEMORY_LIMIT_BYTES,
    teacher_outputs="auto",
    verbose=0,
):
    """Runs the teacher(s) once over fixed data; returns a distillation dataset.

    The result yields `(x, {"labels": y, "teacher_logits": z})` batches (or
    `(x, {"teacher_logits": z})` without labels), which `keras_kd.Distiller`
    recognises: it then skips the teacher's forward pass and uses `z`.
    Cached and uncached training give the same losses (to float
    tolerance). `z` holds each teacher's raw logits, shape
    `(batch, num_teachers, num_classes)`, so the temperature, the ensemble
    weights and the ensemble rule can still change afterwards (e.g. between
    keras-tuner trials) without running the teachers again.

    The inputs must be fixed: the same on every pass. A dataset that is
    shuffled or randomly augmented is detected (two passes over its first
    batch differ) and refused. Random augmentation applied *after* this
    function (a `map` on its result, or augmentation layers inside the
    student) cannot be detected here: do not do it, since the teacher
    would not see the student's augmented inputs and its cached targets
    would be stale (Beyer et al., "Knowledge distillation: A good teacher
    is patient and consistent", CVPR 2022).

    Memory: only the outputs are held, `examples x teachers x classes x 4`
    bytes (`cache_size_bytes`; 29,000 MNIST-1D examples x 10 classes: 1.2
    MB); the inputs stream from `x` as before. Above `memory_limit_bytes`
    the cache is refused with a message saying what it costs, before the
    teacher pass when the dataset's size is known.

    Args:
        teacher: A trained `keras.Model`, or a list of them (an ensemble).
        x: Input array(s), or a finite, unshuffled `tf.data.Dataset` of
            batches of `x`, `(x, y)` or `(x, y, sample_weight)`.
        y: Labels for array `x`; `None` for an unlabelled transfer set.
        batch_size: Batch size of the teacher pass (array inputs) and of
            the returned dataset.
        shuffle: Whether the returned dataset reshuffles each epoch.
        shuffle_buffer: Largest shuffle buffer, in examples.
        seed: Seed of the shuffling.
        memory_limit_bytes: Largest in-memory cache allowed.
        teacher_outputs: `"auto"`, `"logits"` or `"probabilities"`, as in
            `Distiller`; probabilities are stored as log-probabilities.
        verbose: Verbosity of the teacher pass (0 or 1).

    Returns:
        A batched, prefetched `tf.data.Dataset` for `Distiller.fit`.

    Raises:
        ValueError: for an empty, shuffled or augmented dataset, or a cache
            over `memory_limit_bytes`.

    Example:

    >>> data = keras_kd.cache_teacher_outputs(teacher, x_transfer)
    >>> distiller.fit(data, epochs=40)  # the teacher ran once, above
    """
    from keras_kd.distiller import emits_probabilities  # avoid a cycle

    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    dataset = _as_dataset(x, y, batch_size)
    _check_deterministic(dataset)
    from_probs = [
        teacher_outputs == "probabilities"
        or (teacher_outputs == "auto" and emits_probabilities(t))
        for t in teachers
    ]

    @tf.function(reduce_retracing=True)
    def teacher_pass(inputs):
        outputs = []
        for model, probs in zip(teachers, from_probs):
            z = model(inputs, training=False)
            if probs:
                z = kd_losses.probabilities_to_logits(z)
            outputs.append(tf.cast(z, "float32"))
        return tf.stack(outputs, axis=1)

    num_classes = teachers[0].output_shape[-1]
    batches = int(dataset.cardinality())
    if batches > 0:  # Refuse before the teacher pass when the size is known.
        first = tf.nest.flatten(_first_inputs(dataset))[0]
        _check_memory(batches * first.shape[0], num_classes, teachers,
                      memory_limit_bytes)
    zs, num_examples = [], 0
    for batch in dataset:
        z = teacher_pass(_split(batch)[0]).numpy()
        num_examples += len(z)
        _check_memory(num_examples, num_classes, teachers, memory_limit_bytes)
        zs.append(z)
    if not zs:
        raise ValueError(
            "Expected a dataset with at least one batch to cache teacher "
            "outputs for. Received: an empty dataset"
        )
    logits = tf.data.Dataset.from_tensor_slices(np.concatenate(zs, axis=0))

    def attach(example, z):
        # The inputs stream from the source; only the logits are in memory.
        ex, ey, ew = _split(example)
        targets = {TEACHER_LOGITS: z}
        if ey is not None:
            targets[LABELS] = ey
        return (ex, targets) if ew is None else (ex, targets, ew)

    cached = tf.data.Dataset.zip((dataset.unbatch(), logits)).map(attach)
    if shuffle:
        cached = cached.shuffle(
            min(num_examples, shuffle_buffer), seed=seed,
            reshuffle_each_iteration=True,
        )
    steps = math.ceil(num_examples / batch_size)
    cached = cached.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return cached.apply(tf.data.experimental.assert_cardinality(steps))
