"""Batched, prefetched `tf.data` input pipelines from TFDS datasets.

`load` turns a TFDS classification dataset (or the embedded MNIST-1D) into
Keras-ready pipelines of `(x, y)`; `transfer_set` builds the input-only
pipeline that distillation uses as its transfer set. uint8 inputs (images)
are cast to float32 and scaled to `[0, 1]`; other inputs are left as-is.
"""

import dataclasses
import difflib
import numbers

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_kd.datasets import availability

# Splits shuffled in full up to this many examples (60,000: all of MNIST).
_MAX_SHUFFLE_BUFFER = 60_000
# Split names that carry no labels in TFDS datasets (e.g. `stl10`).
_UNLABELLED_SPLIT_NAMES = ("unlabelled",)
_EXAMPLE_NAMES = ("mnist", "fashion_mnist", "cifar10")


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """Input pipelines of a dataset's splits, with what models need to know.

    Attributes:
        name: The dataset name, as passed to `load`.
        splits: Dict mapping each split spec to a batched `tf.data.Dataset`
            of `(x, y)`, or of `x` only for unlabelled splits.
        num_classes: Number of classes of the labels.
        input_shape: Shape of one input `x`, without the batch dimension.
        num_examples: Dict mapping each split spec to its number of
            examples.
        info: The `tfds.core.DatasetInfo` of the dataset.

    Example:

    >>> data = load("mnist1d")
    >>> model.fit(data["train"], validation_data=data["test"])
    """

    name: str
    splits: dict
    num_classes: int
    input_shape: tuple
    num_examples: dict
    info: object = dataclasses.field(repr=False, compare=False)

    def __getitem__(self, split):
        return self.splits[split]


def load(
    name,
    *,
    splits=("train", "test"),
    batch_size=128,
    data_dir=None,
    shuffle_train=True,
    seed=0,
    cache=True,
    download=True,
):
    """Loads a TFDS classification dataset as batched input pipelines.

    Each split spec is read with TFDS (so `"train[:10%]"` or
    `"train+test"` work) and becomes a pipeline that is optionally cached,
    shuffled (specs that include `train`), batched, converted (uint8
    inputs are cast to float32 and divided by 255, once; other inputs are
    unchanged) and prefetched. A spec that includes an unlabelled split,
    such as MNIST-1D's `"transfer"` or `"train+transfer"`, yields inputs
    `x` only; the others yield `(x, y)` with integer labels `y`.

    Embedded datasets (`EMBEDDED`, e.g. `"mnist1d"`) are generated
    locally on first use. Any other dataset is read from `data_dir` if
    prepared there, else downloaded by TFDS, but only after a short probe
    found the network reachable: offline, this fails fast.

    Args:
        name: TFDS dataset name, e.g. `"mnist1d"`, `"mnist"`,
            `"fashion_mnist"` or `"cifar10"`.
        splits: Split spec or sequence of split specs to load.
        batch_size: Number of examples per batch.
        data_dir: Directory where TFDS data are read and written. Defaults
            to TFDS' default, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
        shuffle_train: Whether to shuffle the specs that include `train`,
            reshuffling at each epoch.
        seed: Seed of the shuffling.
        cache: Whether to read each split into memory once, here, so that
            every epoch reads from memory (much faster for small datasets).
            `False` streams each epoch from TFDS' files.
        download: Whether a dataset that is not embedded may be downloaded.

    Returns:
        A `DatasetSplits` with the pipelines keyed by split spec, and the
        dataset's `num_classes` and `input_shape`.

    Raises:
        ValueError: If `name` is not a known dataset, a split is not one
            of its splits, or the dataset is not a classification one.
        DatasetNotAvailableError: If the dataset is not prepared in
            `data_dir` and can't be downloaded.

    Example:

    >>> data = load("mnist1d", batch_size=256)
    >>> data.num_classes, data.input_shape
    (10, (40,))
    >>> x, y = next(iter(data["train"]))
    """
    if isinstance(splits, str):
        splits = (splits,)
    if not splits:
        raise ValueError(
            f"Expected at least one split spec. Received: splits={splits!r}"
        )
    _check_batch_size(batch_size)
    builder = _prepared_builder(name, data_dir, download)
    info = builder.info
    input_key, label_key = _supervised_keys(builder)
    label_feature = info.features[label_key]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise ValueError(
            f"Expected a classification dataset whose label "
            f"'{label_key}' is a `ClassLabel`. Received: name={name!r} with "
            f"label feature {label_feature!r}"
        )

    pipelines, num_examples = {}, {}
    for spec in splits:
        split_names = _split_names(builder, spec)
        x_only = any(s in _unlabelled_splits(builder) for s in split_names)
        shuffle = shuffle_train and "train" in split_names
        pipelines[spec] = _read(
            builder,
            spec,
            x_only=x_only,
            shuffle=shuffle,
            batch_size=batch_size,
            seed=seed,
            cache=cache,
        )
        num_examples[spec] = info.splits[spec].num_examples
    return DatasetSplits(
        name=name,
        splits=pipelines,
        num_classes=label_feature.num_classes,
        input_shape=tuple(info.features[input_key].shape),
        num_examples=num_examples,
        info=info,
    )


def transfer_set(
    name, *, batch_size=128, data_dir=None, seed=0, cache=True, download=True,
    shuffle=True,
):
    """Loads the inputs of a dataset's transfer set for distillation.

    The transfer set is the inputs `x` of the `train` split followed by
    those of every unlabelled split of the dataset (for MNIST-1D,
    `"train+transfer"`: 29,000 examples), shuffled across all of them,
    batched, converted like `load` does, and prefetched. Labels are
    dropped: the teacher provides the targets.

    Args:
        name: TFDS dataset name, e.g. `"mnist1d"`.
        batch_size: Number of examples per batch.
        data_dir: Directory where TFDS data are read and written.
        seed: Seed of the shuffling, which reshuffles at each epoch.
        cache: Whether to read the examples into memory once, here.
        download: Whether a dataset that is not embedded may be downloaded.
        shuffle: Whether to shuffle, reshuffling at each epoch. `False`
            gives the fixed order that `keras_kd.cache_teacher_outputs`
            needs (it then reshuffles the cached examples itself).

    Returns:
        A batched `tf.data.Dataset` of inputs `x` only.

    Raises:
        ValueError: If `name` is not a known dataset.
        DatasetNotAvailableError: If the dataset is not prepared in
            `data_dir` and can't be downloaded.

    Example:

    >>> x_transfer = transfer_set("mnist1d", batch_size=256)
    >>> distiller.fit(x_transfer, epochs=10)
    """
    _check_batch_size(batch_size)
    builder = _prepared_builder(name, data_dir, download)
    _supervised_keys(builder)
    unlabelled = sorted(
        s for s in _unlabelled_splits(builder) if s in builder.info.splits
    )
    spec = "+".join(["train", *unlabelled])
    return _read(
        builder,
        spec,
        x_only=True,
        shuffle=bool(shuffle),
        batch_size=batch_size,
        seed=seed,
        cache=cache,
    )


def _prepared_builder(name, data_dir, download):
    """Returns the TFDS builder of `name`, its data prepared."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Expected the name of a dataset embedded in keras_kd "
            f"{availability.EMBEDDED} or of a TFDS dataset such as "
            f"{_EXAMPLE_NAMES} (see `tfds.list_builders()`).{hint} "
            f"Received: name={name!r}"
        ) from None
    availability.ensure_prepared(builder, download=download)
    return builder


def _supervised_keys(builder):
    """Returns the `(input, label)` feature keys of a builder."""
    keys = builder.info.supervised_keys
    if not (
        isinstance(keys, tuple)
        and len(keys) == 2
        and all(isinstance(key, str) for key in keys)
    ):
        raise ValueError(
            "Expected a dataset with `supervised_keys` naming one input and "
            f"one label feature. Received: name={builder.name!r} with "
            f"supervised_keys={keys!r}"
        )
    return keys


def _unlabelled_splits(builder):
    """Returns the names of the splits of `builder` that have no labels."""
    return (
        *getattr(builder, "UNLABELLED_SPLITS", ()),
        *_UNLABELLED_SPLIT_NAMES,
    )


def _split_names(builder, spec):
    """Returns the split names in a spec such as `"train[:10%]+test"`."""
    names = [part.split("[")[0].strip() for part in spec.split("+")]
    available = tuple(builder.info.splits)
    for split_name in names:
        if split_name not in available:
            raise ValueError(
                f"Expected split specs made of the splits {available} of "
                f"dataset '{builder.name}'. Received: split={spec!r}"
            )
    return names


def _read(builder, spec, *, x_only, shuffle, batch_size, seed, cache):
    """Reads a split spec of a prepared builder into a pipeline."""
    if cache:
        # Read in full, now, rather than with `Dataset.cache()`: a lazily
        # filled cache whose first read is partial (`next(iter(ds))`,
        # `take(1)`) can keep only the part read.
        x, y = builder.as_dataset(split=spec, batch_size=-1, as_supervised=True)
        dataset = tf.data.Dataset.from_tensor_slices(x if x_only else (x, y))
    else:
        dataset = builder.as_dataset(
            split=spec,
            # Ordered datasets (e.g. MNIST-1D) refuse file shuffling.
            shuffle_files=shuffle and not builder.info.disable_shuffling,
            as_supervised=True,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        if x_only:
            dataset = dataset.map(lambda x, y: x)
    num_examples = builder.info.splits[spec].num_examples
    return _make_pipeline(
        dataset,
        batch_size=batch_size,
        shuffle_buffer=min(num_examples, _MAX_SHUFFLE_BUFFER) if shuffle else 0,
        seed=seed,
    )


def _make_pipeline(dataset, *, batch_size, shuffle_buffer, seed):
    """Shuffles, batches, converts and prefetches examples.

    Args:
        dataset: A `tf.data.Dataset` of `(x, y)` or of `x` examples.
        batch_size: Number of examples per batch.
        shuffle_buffer: Size of the shuffle buffer; 0 for no shuffling.
        seed: Seed of the shuffling.

    Returns:
        The batched, prefetched `tf.data.Dataset`.
    """
    if shuffle_buffer:
        dataset = dataset.shuffle(
            shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(_convert_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _convert_inputs(x, *rest):
    """Casts uint8 inputs to float32 in `[0, 1]`; leaves others as-is."""
    if x.dtype == tf.uint8:
        x = tf.cast(x, tf.float32) / 255.0
    return (x, *rest) if rest else x


def _check_batch_size(batch_size):
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(
            "Expected `batch_size` to be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
