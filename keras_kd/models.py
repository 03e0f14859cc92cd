"""Reference teacher and student architectures used by the demo and tutorials.

Both output logits (no final softmax), as `keras_kd.Distiller` expects.
"""

import keras
from keras import layers


def _check_input_shape(input_shape):
    input_shape = tuple(input_shape)
    if not 1 <= len(input_shape) <= 3 or not all(
        isinstance(d, int) and d > 0 for d in input_shape
    ):
        raise ValueError(
            "Expected `input_shape` to be a signal (length,), an image "
            "(height, width) or (height, width, channels) of positive ints. "
            f"Received: input_shape={input_shape!r}"
        )
    return input_shape


def cnn_teacher(input_shape=(40,), num_classes=10, width=64, name="teacher"):
    """A small convolutional classifier: the demo's teacher.

    Uses 1-D convolutions for signals of shape `(length,)` (MNIST-1D) and
    2-D convolutions for images. Three convolution blocks with batch
    normalisation, then a dense head with dropout.

    Args:
        input_shape: `(length,)`, `(height, width)` or
            `(height, width, channels)`.
        num_classes: Number of output logits.
        width: Filters of the first convolution; later ones use twice that.
        name: Model name.

    Returns:
        An uncompiled `keras.Model` that outputs logits.

    Example:

    >>> teacher = keras_kd.models.cnn_teacher((40,), 10)
    >>> teacher.output_shape
    (None, 10)
    """
    input_shape = _check_input_shape(input_shape)
    inputs = keras.Input(input_shape)
    if len(input_shape) == 1:
        x = layers.Reshape(input_shape + (1,))(inputs)
        conv, pool = layers.Conv1D, layers.GlobalAveragePooling1D
    else:
        x = inputs
        if len(input_shape) == 2:
            x = layers.Reshape(input_shape + (1,))(x)
        conv, pool = layers.Conv2D, layers.GlobalAveragePooling2D
    for filters, strides in ((width, 1), (2 * width, 2), (2 * width, 2)):
        x = conv(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    x = pool()(x) if len(input_shape) > 1 else layers.Flatten()(x)
    x = layers.Dense(4 * width, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


def mlp_student(input_shape=(40,), num_classes=10, hidden=(100, 100),
                name="student"):
    """A multilayer perceptron: the demo's student.

    Args:
        input_shape: Shape of one input; it is flattened.
        num_classes: Number of output logits.
        hidden: Units of each hidden ReLU layer. Defaults to `(100, 100)`.
        name: Model name.

    Returns:
        An uncompiled `keras.Model` that outputs logits.

    Example:

    >>> student = keras_kd.models.mlp_student((40,), 10)
    >>> student.count_params()
    15210
    """
    input_shape = _check_input_shape(input_shape)
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    for units in hidden:
        x = layers.Dense(units, activation="relu")(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)
