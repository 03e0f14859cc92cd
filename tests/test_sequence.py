"""Token-level (sequence) distillation: padding is masked out of every loss.

"Averaged over valid positions" means: a batch's loss is the sum of the
per-position losses over the valid positions divided by their number, and
`evaluate` gives that mean over all valid positions of the dataset.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import numpy_soft_loss, numpy_sparse_ce

import keras_kd
from keras_kd import Distiller

# Two sequences of 4 tokens; token 0 is padding.
TOKENS = np.array([[1, 2, 0, 0], [3, 4, 5, 6]])
MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
LABELS = np.array([[1, 2, 0, 0], [3, 4, 0, 1]])


def token_model(table, *, mask_zero=True, name=None):
    """Per-token logits `table[token]`, shape (batch, 4, 5), masking token 0."""
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(table.shape[0], table.shape[1], mask_zero=mask_zero),
        ],
        name=name,
    )
    model.layers[0].set_weights([np.asarray(table, "float32")])
    return model


def tables(seed=0):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(7, 5)).astype("float32")
    student = rng.normal(size=(7, 5)).astype("float32")
    return teacher, student


def test_models_that_agree_on_valid_positions_have_zero_loss():
    teacher_table, _ = tables()
    student_table = teacher_table.copy()
    student_table[0] = [9.0, -9.0, 3.0, 0.0, 1.0]  # differs on padding only
    teacher, student = token_model(teacher_table), token_model(student_table)
    assert teacher(TOKENS).shape == (2, 4, 5)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.0)
    distiller.compile()
    logs = distiller.evaluate(TOKENS, LABELS, return_dict=True, verbose=0)
    assert logs["distillation_loss"] == 0.0
    assert logs["loss"] == 0.0
    # The same models without masks do see the padding.
    unmasked = Distiller(
        token_model(student_table, mask_zero=False),
        token_model(teacher_table, mask_zero=False),
        temperature=2.0,
        alpha=0.0,
    )
    unmasked.compile()
    assert unmasked.evaluate(TOKENS, LABELS, return_dict=True, verbose=0)["loss"] > 1.0


def test_padded_positions_get_no_gradient():
    teacher_table, student_table = tables()
    logits = tf.Variable(student_table[TOKENS])
    loss_fn = keras_kd.DistillationLoss(temperature=2.0)
    with tf.GradientTape() as tape:
        y_pred = tf.identity(logits)
        keras_kd.losses.set_keras_mask(y_pred, tf.constant(MASK))
        loss = loss_fn(teacher_table[TOKENS], y_pred)
    gradient = tape.gradient(loss, logits).numpy()
    assert np.all(gradient[~MASK] == 0.0)
    assert np.all(np.abs(gradient[MASK]).sum(axis=-1) > 0.0)

    # Through the Distiller: embedding row 0 is used only at padded positions,
    # so a training step leaves it unchanged and moves the others.
    student = token_model(student_table)
    distiller = Distiller(student, token_model(teacher_table), alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))
    distiller.fit(TOKENS, LABELS, epochs=1, verbose=0)
    trained = student.layers[0].get_weights()[0]
    np.testing.assert_array_equal(trained[0], student_table[0])
    assert np.all(np.abs(trained[1:] - student_table[1:]).sum(axis=-1) > 1e-4)


@pytest.mark.parametrize("padding", ["mask", "sample_weight"])
def test_losses_are_means_over_valid_positions(padding):
    teacher_table, student_table = tables(seed=1)
    mask_zero = padding == "mask"
    teacher = token_model(teacher_table, mask_zero=mask_zero)
    student = token_model(student_table, mask_zero=mask_zero)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.3)
    distiller.compile(metrics=["accuracy"])
    weights = MASK.astype("float32") if padding == "sample_weight" else None
    logs = distiller.evaluate(
        TOKENS, LABELS, sample_weight=weights, return_dict=True, verbose=0
    )

    z_t, z_s = teacher_table[TOKENS], student_table[TOKENS]
    soft = numpy_soft_loss(z_t, z_s, 2.0)[MASK].mean()
    hard = numpy_sparse_ce(z_s[MASK], LABELS[MASK]).mean()
    accuracy = (z_s.argmax(-1) == LABELS)[MASK].mean()
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.3 * hard + 0.7 * soft, rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], accuracy, rtol=1e-6)

    # The loss class alone gives the same mean, from a mask or from weights.
    loss = keras_kd.DistillationLoss(temperature=2.0)
    np.testing.assert_allclose(
        loss(z_t, z_s, sample_weight=MASK.astype("float32")), soft, rtol=1e-5
    )


def test_dataset_mean_weights_batches_by_valid_positions():
    teacher_table, student_table = tables(seed=2)
    teacher, student = token_model(teacher_table), token_model(student_table)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.0)
    distiller.compile()
    # Batches of one sequence: 2 and 4 valid positions.
    logs = distiller.evaluate(TOKENS, LABELS, batch_size=1, return_dict=True, verbose=0)
    per_position = numpy_soft_loss(teacher_table[TOKENS], student_table[TOKENS], 2.0)
    np.testing.assert_allclose(
        logs["distillation_loss"], per_position[MASK].mean(), rtol=1e-5
    )


def test_valid_positions():
    logits = keras.ops.zeros((2, 4, 5))
    assert keras_kd.losses.valid_positions(logits) is None
    assert keras_kd.losses.valid_positions(keras.ops.zeros((2, 5)), np.ones(2)) is None
    np.testing.assert_array_equal(
        keras_kd.losses.valid_positions(logits, MASK.astype("float32")), MASK
    )
    per_sequence = keras_kd.losses.valid_positions(logits, np.array([0.0, 2.0]))
    np.testing.assert_array_equal(per_sequence, [[False] * 4, [True] * 4])
