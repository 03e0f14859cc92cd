"""Teacher-output cache: run the teacher once over a fixed transfer set.

For a fixed, non-augmented dataset the teacher's outputs never change, so
they can be computed once and fed to the `Distiller` with each batch; later
epochs (and keras-tuner trials) then cost what training the student alone
costs.
"""

import hashlib
import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_kd import losses as kd_losses

TEACHER_LOGITS = "teacher_logits"
LABELS = "labels"

# Above this many bytes of teacher outputs, `cache_teacher_outputs` refuses.
DEFAULT_MEMORY_LIMIT_BYTES = 2 * 1024**3
# Batch size of the cache of array inputs, unless given.
DEFAULT_BATCH_SIZE = 256


def cache_size_bytes(num_examples, num_classes, num_teachers=1):
    """Bytes the cache holds: examples x teachers x classes x 4 (float32)."""
    return int(num_examples) * int(num_teachers) * int(num_classes) * 4


def is_cached_batch(y):
    """Whether a batch's `y` carries cached teacher outputs (static check)."""
    return isinstance(y, dict) and TEACHER_LOGITS in y


def is_cached_dataset(data):
    """Whether `data` is a dataset from `cache_teacher_outputs` (static)."""
    return isinstance(data, tf.data.Dataset) and is_cached_batch(
        _split(data.element_spec)[1]
    )


def with_class_weight(dataset, class_weight):
    """A cached dataset with `class_weight[label]` as its sample weights.

    What Keras does with `fit(class_weight=...)` for a single output, done
    on the labels the cache carries (Keras itself refuses the cached
    batches' dict of targets).

    Raises:
        ValueError: if the dataset has no labels or sample weights too.
    """
    _, targets, weights = _split(dataset.element_spec)
    if LABELS not in targets or weights is not None:
        what = "no labels" if LABELS not in targets else "sample weights"
        raise ValueError(
            "Expected `class_weight` with labelled cached data without "
            f"sample weights, but the data has {what}. Received: "
            f"class_weight={class_weight!r}"
        )
    table = tf.constant(
        [float(class_weight.get(c, 1.0)) for c in range(max(class_weight) + 1)]
    )

    def weigh(x, targets):
        y = targets[LABELS]
        if y.shape.rank >= 2 and y.shape[-1] > 1:  # one-hot
            classes = tf.argmax(y, axis=-1, output_type=tf.int32)
        else:
            classes = tf.cast(tf.round(tf.reshape(y, [-1])), tf.int32)
        return x, targets, tf.gather(table, classes)

    return dataset.map(tf.autograph.experimental.do_not_convert(weigh))


def _split(batch):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    return x, y, sample_weight


def _empty_error():
    return ValueError(
        "Expected a dataset with at least one batch to cache teacher "
        "outputs for. Received: an empty dataset"
    )


def _check_batched(dataset, teacher):
    """Refuses a dataset of single examples (one axis short of a batch)."""
    inputs = tf.nest.flatten(_split(dataset.element_spec)[0])[0]
    wanted = getattr(teacher, "input_shape", None)
    if isinstance(wanted, tuple) and wanted and not isinstance(wanted[0], tuple):
        if inputs.shape.rank == len(wanted) - 1:
            raise ValueError(
                "Expected `x` to be a batched dataset (the teacher takes "
                f"inputs of shape {wanted}), but its elements have shape "
                f"{tuple(inputs.shape)}: call `.batch(...)` on it first. "
                "Received: x=an unbatched tf.data.Dataset"
            )


def _check_not_cached(dataset):
    if is_cached_dataset(dataset):
        raise ValueError(
            "Expected `x` to be the data to run the teacher on, but it "
            "already carries cached teacher outputs: pass it to `fit` as "
            "it is. Received: x=a dataset from "
            "`keras_kd.cache_teacher_outputs`"
        )


def _cache_bytes(num_examples, output_shape, num_teachers):
    """Bytes of the outputs of `output_shape` (per teacher and example)."""
    return cache_size_bytes(
        num_examples, int(np.prod(output_shape)), num_teachers
    )


def _check_memory(num_examples, output_shape, teachers, limit, counted=""):
    size = _cache_bytes(num_examples, output_shape, len(teachers))
    if size > limit:
        unit = (
            "classes" if len(output_shape) == 1
            else "values (classes x positions)"
        )
        raise ValueError(
            "The teacher-output cache would exceed its memory limit: "
            f"{counted}{num_examples} examples x {len(teachers)} teacher(s) x "
            f"{int(np.prod(output_shape))} {unit} x 4 bytes = {size} bytes. "
            "Distil without a cache, use fewer examples, or raise the limit. "
            f"Received: memory_limit_bytes={limit}"
        )


def _fingerprint(inputs):
    """A digest of a batch's inputs: their shapes, dtypes and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    # Ragged and sparse tensors by their values, row splits or indices.
    for a in tf.nest.flatten(inputs, expand_composites=True):
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(repr((a.shape, a.dtype.str)).encode())
        digest.update(a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
    return digest.digest()


def _check_deterministic(dataset, fingerprints):
    """Refuses a dataset that gives other inputs on a second pass.

    Reads the whole dataset again (inputs only, no teacher) and compares
    every batch's fingerprint with the teacher pass's. Runs after the
    teacher pass: a partial first read of a dataset with a lazily filled
    `Dataset.cache()` could truncate that cache.
    """
    again = [_fingerprint(_split(batch)[0]) for batch in dataset]
    if not again:
        raise ValueError(
            "Expected `x` to be a dataset that can be read twice (the cache "
            "reads it again to check that it is fixed), but its second pass "
            "yielded nothing: it can be iterated only once, e.g. "
            "`from_generator` over a generator object. Pass a callable that "
            "returns a fresh generator. Received: x=a tf.data.Dataset that "
            "is empty on a second pass"
        )
    changed = next(
        (i for i, (a, b) in enumerate(zip(fingerprints, again)) if a != b),
        None if len(again) == len(fingerprints) else min(len(again), len(fingerprints)),
    )
    if changed is not None:
        raise ValueError(
            "Expected `x` to give the same inputs on every pass, but its "
            f"batch {changed + 1} differs on a second pass (it is shuffled "
            "or randomly augmented), so cached teacher outputs would not "
            "match the student's inputs. Cache the fixed, unshuffled data "
            "and shuffle with `shuffle=True` here; with random augmentation, "
            "distil without a cache so that the teacher sees the same "
            "augmented inputs as the student. Received: x=a tf.data.Dataset "
            "whose inputs change between passes"
        )


def _count_examples(dataset):
    """The number of examples of a batched dataset, read without a teacher."""
    return int(dataset.reduce(
        np.int64(0),
        lambda n, batch: n + tf.cast(
            tf.shape(tf.nest.flatten(_split(batch)[0])[0])[0], tf.int64
        ),
    ))


def _check_same_shape(array, first, index, what):
    if array.shape[1:] != first.shape[1:]:
        raise ValueError(
            f"The teacher-output cache needs {what} of one shape beyond the "
            f"batch axis, but batch {index + 1} has shape {array.shape} "
            f"after {first.shape}. Pad to a fixed length (e.g. "
            "`padded_batch(..., padded_shapes=...)` with fixed shapes), or "
            "distil without a cache. Received: x=a dataset of varying shapes"
        )


def _known_size(dataset):
    """Examples in a dataset of known cardinality and batch size, or None."""
    batches = int(dataset.cardinality())
    spec = tf.nest.flatten(dataset.element_spec)[0]
    if batches < 0 or not spec.shape or spec.shape[0] is None:
        return None
    return batches * spec.shape[0]  # at most: the last batch may be short


def _output_shape(teachers):
    """The teachers' output shape per example, if known before they run.

    Refuses an ensemble whose numbers of classes differ.
    """
    shapes = []
    for t in teachers:
        try:
            shapes.append(tuple(t.output_shape[1:]))
        except (AttributeError, ValueError, TypeError):
            shapes.append(None)  # e.g. a subclassed model: seen when it runs
    sizes = [shape[-1] if shape else None for shape in shapes]
    if len({n for n in sizes if n is not None}) > 1:
        raise ValueError(
            "Expected every teacher of the ensemble to output the same "
            f"number of classes. Received: teachers with {sizes} classes"
        )
    known = [s for s in shapes if s and all(d is not None for d in s)]
    return known[0] if len(known) == len(teachers) else None


def _teacher_pass_fn(teachers, teacher_outputs):
    from keras_kd.distiller import _assert_not_probabilities  # avoid a cycle
    from keras_kd.distiller import emits_probabilities

    from_probs = [
        teacher_outputs == "probabilities"
        or (teacher_outputs == "auto" and emits_probabilities(t))
        for t in teachers
    ]

    @tf.function(reduce_retracing=True)
    def teacher_pass(inputs):
        outputs, masked = [], False
        for model, probs in zip(teachers, from_probs):
            z = model(inputs, training=False)
            masked = masked or kd_losses.get_keras_mask(z) is not None
            if probs:
                z = kd_losses.probabilities_to_logits(z)
            else:
                z = tf.cast(z, "float32")
                if teacher_outputs == "auto":  # as the Distiller checks
                    _assert_not_probabilities(z)
            outputs.append(z)
        return tuple(outputs), tf.constant(masked)  # masked: known at trace

    masked_seen = []

    def run(inputs):
        try:
            outputs, masked = teacher_pass(inputs)
        except tf.errors.InvalidArgumentError as error:
            if "look like probabilities" not in str(error):
                raise
            raise ValueError(
                "The teacher's outputs are non-negative and sum to 1, so they "
                "look like probabilities, not logits, but its output layer is "
                "not a softmax that could be detected. Pass "
                "teacher_outputs='probabilities' (or 'logits' if they really "
                "are logits). Received: teacher_outputs='auto'"
            ) from None
        outputs = [z.numpy() for z in outputs]
        shapes = [z.shape[1:] for z in outputs]
        if len(set(shapes)) > 1:
            raise ValueError(
                "Expected every teacher of the ensemble to give outputs of "
                f"one shape. Received: teacher outputs of shapes {shapes}"
            )
        if bool(masked) and not masked_seen:
            masked_seen.append(True)
            warnings.warn(
                "keras_kd.cache_teacher_outputs: the teacher's outputs carry "
                "a Keras mask (padding), which the cache does not keep: on "
                "cached data the Distiller masks by the student's mask and "
                "the sample weights only. Give the student the same mask "
                "(e.g. `mask_zero=True`), or distil without a cache.",
                UserWarning, stacklevel=4,
            )
        return np.stack(outputs, axis=1)

    return run


def _progress(batches, verbose):
    """The batches, with a Keras progress bar of the teacher pass if verbose."""
    if not verbose:
        yield from batches
        return
    total = int(batches.cardinality())
    bar = keras.utils.Progbar(total if total >= 0 else None, unit_name="batch")
    for step, batch in enumerate(batches, 1):
        yield batch
        bar.update(step)


def _cache_arrays(x, y, sample_weight, teacher_pass, check_memory,
                  batch_size, verbose):
    """`(columns, number of examples)` for in-memory arrays."""
    if x is None:
        raise ValueError(
            "Expected `x` to be input array(s) or a tf.data.Dataset. "
            "Received: x=None"
        )
    received = type(x).__name__
    x = tf.nest.map_structure(np.asarray, x)
    if any(a.ndim == 0 or a.dtype.kind in "OSU" for a in tf.nest.flatten(x)):
        raise ValueError(
            "Expected `x` to be numeric input array(s) with a batch axis, or "
            f"a tf.data.Dataset. Received: x of type {received}"
        )
    num_examples = len(tf.nest.flatten(x)[0])
    if num_examples == 0:
        raise _empty_error()
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None and len(value) != num_examples:
            raise ValueError(
                f"Expected `{name}` to have one entry per example of `x` "
                f"({num_examples}). Received: {name} of length {len(value)}"
            )
    check_memory(num_examples)
    batches = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    zs = []
    for b in _progress(batches, verbose):
        zs.append(teacher_pass(b))
        if len(zs) == 1:  # the outputs' size is known now
            check_memory(num_examples)
    return _columns(x, y, sample_weight, np.concatenate(zs)), num_examples


def _columns(x, y, sample_weight, logits):
    """The `(x, targets[, sample_weight])` structure of cached examples."""
    targets = {TEACHER_LOGITS: logits}
    if y is not None:
        targets[LABELS] = y
    return (x, targets) if sample_weight is None else (x, targets, sample_weight)


def _gather_batches(columns, num_examples, *, batch_size, shuffle, seed):
    """Batches gathered from in-memory arrays by (shuffled) indices.

    As `Model.fit` does with arrays: the indices are shuffled each epoch
    and each batch is one `gather` per array, so an epoch costs about what
    the student's own epoch costs (slicing the arrays into per-example
    elements, then batching them again, cost twice as much in
    `benchmarks/speed.py`).
    """
    tensors = tf.nest.map_structure(tf.convert_to_tensor, columns)
    indices = tf.data.Dataset.range(num_examples)
    if shuffle:
        indices = indices.shuffle(
            num_examples, seed=seed, reshuffle_each_iteration=True
        )

    def gather(batch_indices):
        return tf.nest.map_structure(
            lambda t: tf.gather(t, batch_indices), tensors
        )

    return indices.batch(batch_size).map(
        tf.autograph.experimental.do_not_convert(gather),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _as_numpy(batch):
    """A batch's dense tensors as numpy arrays; None if any is not dense."""
    parts = tf.nest.flatten(batch)
    if not all(isinstance(t, tf.Tensor) for t in parts):
        return None  # ragged or sparse: streamed instead
    return tf.nest.pack_sequence_as(batch, [t.numpy() for t in parts])


def _concatenate(held):
    """One array per component of the held batches; None if shapes vary."""
    try:
        return tf.nest.map_structure(
            lambda *parts: np.concatenate(parts, axis=0), *held
        )
    except ValueError:  # e.g. padded batches of different lengths
        return None


def _cache_dataset(dataset, teacher_pass, check_memory, limit, verbose):
    """Teacher pass over a dataset: `(columns, elements, examples, batch)`.

    Its examples are held in memory, as `columns` for `_gather_batches`,
    when they fit in `limit` bytes together with the teacher outputs;
    otherwise `columns` is None and `elements` streams the inputs from the
    dataset on every epoch, attaching the outputs held in memory. `batch`
    is the size of the dataset's first batch.
    """
    _check_not_cached(dataset)
    known = _known_size(dataset)
    if known is not None:  # Refuse before the teacher pass.
        check_memory(known)
    batches = int(dataset.cardinality())
    zs, held, held_bytes, fingerprints, num_examples = [], [], 0, [], 0
    outputs_bytes = 0
    first_inputs = None
    for batch in _progress(dataset, verbose):
        inputs = _split(batch)[0]
        if first_inputs is None:
            first_inputs = inputs
        for a, b in zip(tf.nest.flatten(inputs), tf.nest.flatten(first_inputs)):
            _check_same_shape(a, b, len(zs), "inputs")
        fingerprints.append(_fingerprint(inputs))
        z = teacher_pass(inputs)
        if zs:
            _check_same_shape(z, zs[0], len(zs), "teacher outputs")
        elif batches > 0 and _cache_bytes(
            batches * len(z), z.shape[2:], z.shape[1]
        ) > limit:  # refuse early, once a count without the teacher agrees
            check_memory(_count_examples(dataset))
        num_examples += len(z)
        check_memory(
            num_examples,
            "the dataset's size is unknown, and its first "
            if batches < 0 else f"its first {len(zs) + 1} of {batches} batches hold ",
        )
        zs.append(z)
        outputs_bytes += z.nbytes
        if held is not None:
            arrays = _as_numpy(batch)
            if arrays is not None:
                held_bytes += sum(a.nbytes for a in tf.nest.flatten(arrays))
            if arrays is None or held_bytes + outputs_bytes > limit:
                held = None  # too large, or not dense: stream instead
            else:
                held.append(arrays)
    if not zs:
        raise _empty_error()
    _check_deterministic(dataset, fingerprints)
    logits = np.concatenate(zs, axis=0)
    examples = _concatenate(held) if held else None
    del held
    first_size = len(zs[0])
    if examples is not None:
        return _columns(*_split(examples), logits), None, num_examples, first_size

    def attach(example, z):
        # The inputs stream from the source; only the logits are in memory.
        return _columns(*_split(example), z)

    elements = tf.data.Dataset.zip(
        (dataset.unbatch(), tf.data.Dataset.from_tensor_slices(logits))
    ).map(attach)
    return None, elements, num_examples, first_size


def cache_teacher_outputs(
    teacher,
    x,
    y=None,
    *,
    sample_weight=None,
    batch_size=None,
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
    shuffled or randomly augmented is detected and refused: after the
    teacher pass (which a partial read could otherwise truncate, for a
    lazily filled `Dataset.cache()`), the dataset is read once more,
    without the teacher, and every batch must match. Random augmentation
    applied *after* this function (a `map` on its result, or augmentation
    layers inside the student) cannot be detected here: do not do it, since
    the teacher would not see the student's augmented inputs and its
    cached targets would be stale (Beyer et al., "Knowledge distillation: A good teacher
    is patient and consistent", CVPR 2022).

    Memory: the teacher outputs take `examples x teachers x classes x 4`
    bytes (`cache_size_bytes`; 29,000 MNIST-1D examples x 10 classes: 1.2
    MB). Array inputs are copied once into TensorFlow tensors (the cache
    then holds that copy as well as the outputs), and each batch is
    gathered from them by shuffled indices, as `Model.fit` does with
    arrays, so a cached epoch costs about what the student's own epoch
    costs. A dataset's examples are read into memory too during the
    teacher pass when they fit in `memory_limit_bytes` together with the
    outputs (and are dense tensors of fixed shape); otherwise they stream
    from the dataset on every epoch (from disk, for TFDS) and only the
    outputs are held, which is slower per epoch. When even the outputs
    exceed `memory_limit_bytes`, the cache is refused with a message
    saying what it costs, before the teacher pass for arrays and datasets
    of known size, after the first batch for datasets of known
    cardinality.

    Args:
        teacher: A trained `keras.Model`, or a list of them (an ensemble).
        x: Input array(s), or a finite, unshuffled `tf.data.Dataset` of
            batches of `x`, `(x, y)` or `(x, y, sample_weight)`.
        y: Labels for array `x`; `None` for an unlabelled transfer set.
        sample_weight: Per-example weights for array `x`, or `None`.
        batch_size: Batch size of the returned dataset (and of the teacher
            pass over arrays). `None`: a dataset's own batch size (that of
            its first batch), or 256 for arrays.
        shuffle: Whether the returned dataset reshuffles each epoch.
        shuffle_buffer: Largest shuffle buffer, in examples, for a
            dataset `x`. Arrays are always shuffled in full.
        seed: Seed of the shuffling.
        memory_limit_bytes: Most bytes the cache may hold in memory: the
            teacher outputs must fit, and a dataset's examples are held
            only if they fit too.
        teacher_outputs: `"auto"`, `"logits"` or `"probabilities"`, as in
            `Distiller`; probabilities are stored as log-probabilities.
        verbose: 1 shows a progress bar of the teacher pass; 0 is silent.

    Returns:
        A batched, prefetched `tf.data.Dataset` for `Distiller.fit`.

    Raises:
        ValueError: for an empty, unbatched, already cached, shuffled or
            augmented dataset, a dataset that can be read only once, `y`
            or `sample_weight` of another length than `x`, a teacher that
            emits undetected probabilities (`teacher_outputs="auto"`), a
            bad argument, or a cache over `memory_limit_bytes`.

    Example:

    >>> data = keras_kd.cache_teacher_outputs(teacher, x_transfer)
    >>> distiller.fit(data, epochs=40)  # the teacher ran once, above
    """
    from keras_kd.distiller import _as_teacher_list  # avoid a cycle
    from keras_kd.distiller import check_positive_int
    from keras_kd.distiller import validate_teacher_outputs

    teachers = _as_teacher_list(teacher)
    validate_teacher_outputs(teacher_outputs)
    check_positive_int("memory_limit_bytes", memory_limit_bytes)
    check_positive_int("shuffle_buffer", shuffle_buffer)
    check_positive_int("batch_size", batch_size, none_ok=True)
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise ValueError(
            f"Expected `seed` to be an integer or None. Received: seed={seed!r}"
        )
    run_teachers = _teacher_pass_fn(teachers, teacher_outputs)
    output_shape = [_output_shape(teachers)]  # per teacher and example

    def teacher_pass(inputs):
        z = run_teachers(inputs)
        output_shape[0] = z.shape[2:]
        return z

    def check_memory(num_examples, counted=""):
        if output_shape[0] is not None:  # else known after the first batch
            _check_memory(
                num_examples, output_shape[0], teachers, memory_limit_bytes,
                counted,
            )

    if not isinstance(verbose, (bool, int)) or verbose not in (0, 1):
        raise ValueError(
            f"Expected `verbose` to be 0 or 1. Received: verbose={verbose!r}"
        )
    if isinstance(x, keras.utils.PyDataset):
        raise ValueError(
            "Expected `x` to be arrays or a tf.data.Dataset; a PyDataset "
            "cannot be cached (convert its batches to arrays, or distil "
            "without a cache). Received: x of type " + type(x).__name__
        )
    if isinstance(x, tf.data.Dataset):
        if x.options().deterministic is False:
            raise ValueError(
                "Expected a dataset of a fixed order, but its options allow "
                "a nondeterministic one, so cached teacher outputs could "
                "stop matching its inputs on a later pass. Received: x with "
                "options().deterministic=False"
            )
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise ValueError(
                    f"Pass `{name}` only with array inputs; a dataset "
                    f"carries its own. Received: {name} of type "
                    f"{type(value).__name__}"
                )
        _check_batched(x, teachers[0])
        if x.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "Expected a finite dataset to cache teacher outputs for. "
                "Received: x=an infinite tf.data.Dataset (e.g. `.repeat()` "
                "without a count); cache the data before repeating it"
            )
        columns, elements, num_examples, first_batch = _cache_dataset(
            x, teacher_pass, check_memory, memory_limit_bytes, verbose
        )
        batch_size = batch_size or first_batch
    else:
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        columns, num_examples = _cache_arrays(
            x, y, sample_weight, teacher_pass, check_memory, batch_size,
            verbose,
        )
    if columns is not None:
        cached = _gather_batches(
            columns, num_examples,
            batch_size=batch_size, shuffle=shuffle, seed=seed,
        )
    else:
        if shuffle:
            elements = elements.shuffle(
                min(num_examples, shuffle_buffer), seed=seed,
                reshuffle_each_iteration=True,
            )
        cached = elements.batch(batch_size)
    steps = math.ceil(num_examples / batch_size)
    cached = cached.prefetch(tf.data.AUTOTUNE)
    return cached.apply(tf.data.experimental.assert_cardinality(steps))
