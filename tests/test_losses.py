import keras
import numpy as np
import pytest
from conftest import numpy_soft_loss, roundtrip

from keras_kd import losses

TEACHER = [[2.0, 1.0, 0.0]]
STUDENT = [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "temperature, expected", [(1, 0.2662), (2, 0.3137), (4, 0.3282), (10, 0.3325)]
)
def test_soft_loss_golden_values(temperature, expected):
    got = np.asarray(losses.distillation_loss(TEACHER, STUDENT, temperature))
    assert got.shape == (1,)
    np.testing.assert_allclose(got[0], expected, atol=5e-5)
    np.testing.assert_allclose(
        got, numpy_soft_loss(TEACHER, STUDENT, temperature), rtol=1e-5
    )


def test_soft_targets_are_tempered_softmax():
    got = np.asarray(losses.soft_targets(TEACHER, temperature=10.0))
    np.testing.assert_allclose(got, [[0.367, 0.332, 0.301]], atol=5e-4)


def test_probabilities_to_logits_never_softmaxes_twice():
    probs = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    logits = losses.probabilities_to_logits([probs])
    got = np.asarray(losses.soft_targets(logits, temperature=10.0))
    np.testing.assert_allclose(got, [[0.367, 0.332, 0.301]], atol=5e-4)


def test_loss_is_float32_and_finite_for_large_low_precision_logits():
    teacher = np.array([[3e4, 0.0, -3e4]], dtype="float16")
    student = np.array([[0.0, 3e4, 0.0]], dtype="float16")
    got = losses.distillation_loss(teacher, student, temperature=0.25)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(
        np.asarray(got), numpy_soft_loss(teacher.astype("float64"), student, 0.25),
        rtol=1e-3,
    )


def test_sequence_logits_reduce_over_classes_only():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 5))
    got = np.asarray(losses.distillation_loss(t, s, 3.0))
    np.testing.assert_allclose(got, numpy_soft_loss(t, s, 3.0), rtol=1e-5)


def test_loss_class_reduces_with_sample_weight():
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    w = np.array([1.0, 0.0, 2.0, 1.0, 0.5])
    got = float(losses.DistillationLoss(4.0)(t, s, sample_weight=w))
    np.testing.assert_allclose(got, (w * numpy_soft_loss(t, s, 4.0)).sum() / 5, rtol=1e-5)


def test_loss_class_round_trips(tmp_path):
    loss = losses.DistillationLoss(temperature=3.5, name="kd")
    clone = roundtrip(loss, tmp_path)
    assert clone.temperature == 3.5 and clone.name == "kd"
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, losses.DistillationLoss)
    assert restored.temperature == 3.5


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "2", None, True])
def test_bad_temperature_is_named(bad):
    with pytest.raises(ValueError, match=r"Received: temperature="):
        losses.DistillationLoss(temperature=bad)
