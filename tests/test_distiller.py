import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import numpy_soft_loss, numpy_sparse_ce, roundtrip, tiny_data, tiny_model

import keras_kd
from keras_kd import Distiller


def compiled(student, teacher, **kwargs):
    compile_kwargs = kwargs.pop("compile", {})
    distiller = Distiller(student, teacher, **kwargs)
    distiller.compile(**{"optimizer": "adam", "metrics": ["accuracy"], **compile_kwargs})
    return distiller


def test_softmax_teacher_is_detected_and_not_softmaxed_twice():
    teacher = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    teacher.layers[-1].set_weights([np.eye(3), np.zeros(3)])  # pre-softmax = x
    distiller = Distiller(tiny_model(inputs=3, hidden=4), teacher, temperature=10.0)
    logits = distiller.teacher_logits(np.array([[2.0, 1.0, 0.0]], "float32"))
    targets = np.asarray(keras_kd.soft_targets(logits, temperature=10.0))
    np.testing.assert_allclose(targets, [[0.367, 0.332, 0.301]], atol=5e-4)


def test_undetected_probability_teacher_stops_on_first_batch():
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(lambda t: keras.ops.softmax(t))(keras.layers.Dense(3)(inputs))
    teacher = keras.Model(inputs, outputs)
    distiller = compiled(tiny_model(), teacher)
    x, y = tiny_data()
    with pytest.raises(tf.errors.InvalidArgumentError, match="look like probabilities.*teacher_outputs="):
        distiller.fit(x, y, epochs=1, verbose=0)
    # Declared explicitly, the same teacher trains.
    distiller = compiled(tiny_model(), teacher, teacher_outputs="probabilities")
    assert np.isfinite(distiller.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_teacher_is_frozen_and_student_trains(models):
    teacher, student = models
    x, y = tiny_data()
    before_teacher = [v.numpy().copy() for v in teacher.variables]
    before_student = [v.numpy().copy() for v in student.trainable_variables]
    out_before = teacher(x[:8], training=False).numpy()
    compiled(student, teacher).fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert len(before_teacher) == 9  # 2 kernels, 2 biases, 4 BN, 1 dropout seed
    for old, var in zip(before_teacher, teacher.variables):
        np.testing.assert_array_equal(old, var.numpy(), err_msg=var.path)
    np.testing.assert_array_equal(out_before, teacher(x[:8], training=False).numpy())
    assert all(
        not np.array_equal(old, var.numpy())
        for old, var in zip(before_student, student.trainable_variables)
    )


def test_evaluate_is_the_dataset_mean_and_matches_plain_keras():
    x, y = tiny_data(n=71)  # batches of 32, 32 and 7
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    distiller = compiled(student, teacher, alpha=1.0, temperature=2.0)
    got = distiller.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    reference = keras.models.clone_model(student)
    reference.set_weights(student.get_weights())
    reference.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    want = reference.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["student_loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], rtol=1e-6)
    logits = student.predict(x, verbose=0)
    np.testing.assert_allclose(got["loss"], numpy_sparse_ce(logits, y).mean(), rtol=1e-4)
    np.testing.assert_allclose(
        got["distillation_loss"],
        numpy_soft_loss(teacher.predict(x, verbose=0), logits, 2.0).mean(),
        rtol=1e-4,
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_total_loss_mixes_hard_and_soft_terms(alpha):
    x, y = tiny_data()
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    got = compiled(student, teacher, alpha=alpha, temperature=4.0).evaluate(
        x, y, return_dict=True, verbose=0
    )
    logits, t_logits = student.predict(x, verbose=0), teacher.predict(x, verbose=0)
    hard = numpy_sparse_ce(logits, y).mean()
    soft = numpy_soft_loss(t_logits, logits, 4.0).mean()
    np.testing.assert_allclose(got["loss"], alpha * hard + (1 - alpha) * soft, rtol=1e-4)


def _first_epoch_loss(model, x, y, **fit_kwargs):
    """Loss logged by one epoch at learning rate 0: the loss of the weights."""
    return model.fit(x, y, batch_size=71, epochs=1, verbose=0, shuffle=False, **fit_kwargs).history["loss"][0]


def test_class_weight_and_sample_weight_match_plain_keras():
    x, y = tiny_data()
    y = y % 2
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    reference = keras.models.clone_model(student)
    reference.set_weights(student.get_weights())
    reference.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    distiller = compiled(student, teacher, alpha=1.0, compile={"optimizer": keras.optimizers.SGD(0.0)})
    ce = numpy_sparse_ce(student.predict(x, verbose=0), y)
    weights = np.where(y == 1, 3.0, 1.0)
    for kwargs in ({"class_weight": {0: 1, 1: 3}}, {"sample_weight": weights}):
        got = _first_epoch_loss(distiller, x, y, **kwargs)
        want = _first_epoch_loss(reference, x, y, **kwargs)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(got, (weights * ce).mean(), rtol=1e-4)


def test_unlabelled_transfer_set_trains_by_pure_distillation(models):
    teacher, student = models
    x, _ = tiny_data(n=64)
    distiller = compiled(student, teacher, alpha=0.5)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16)
    with pytest.warns(UserWarning, match="no labels"):
        history = distiller.fit(dataset, epochs=3, verbose=0)
    assert set(history.history) == {"loss", "distillation_loss"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    np.testing.assert_allclose(history.history["loss"], history.history["distillation_loss"])
    with pytest.raises(ValueError, match="Received: alpha=1.0"):
        compiled(tiny_model(seed=3), teacher, alpha=1.0).fit(dataset, verbose=0)


def test_save_and_load_round_trip(models, tmp_path):
    teacher, student = models
    x, y = tiny_data()
    distiller = compiled(student, teacher, temperature=3.0, alpha=0.25)
    distiller.fit(x, y, epochs=1, verbose=0)
    loaded = roundtrip(distiller, tmp_path)
    assert isinstance(loaded, Distiller)
    assert (loaded.temperature, loaded.alpha) == (3.0, 0.25)
    assert not loaded.teacher.trainable
    weights = lambda d: [v for v in d.teacher.variables + d.student.variables if "seed" not in v.path]
    assert len(weights(loaded)) == len(weights(distiller)) == 12
    for a, b in zip(weights(distiller), weights(loaded)):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6)
    assert np.isfinite(loaded.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_student_saves_alone_at_its_own_size(models, tmp_path):
    teacher, student = models
    teacher = tiny_model(hidden=512, seed=1)
    distiller = compiled(student, teacher)
    distiller.fit(*tiny_data(), epochs=1, verbose=0)
    distiller.student.save(tmp_path / "student.keras")
    distiller.save(tmp_path / "distiller.keras")
    student_size = (tmp_path / "student.keras").stat().st_size
    assert student_size < (tmp_path / "distiller.keras").stat().st_size / 3
    reloaded = keras.saving.load_model(tmp_path / "student.keras")
    x = tiny_data()[0]
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "Received: temperature=0"),
        ({"temperature": -1}, "Received: temperature=-1"),
        ({"temperature": float("nan")}, "Received: temperature=nan"),
        ({"temperature": "hot"}, "Received: temperature='hot'"),
        ({"alpha": -0.1}, "Received: alpha=-0.1"),
        ({"alpha": 1.5}, "Received: alpha=1.5"),
        ({"teacher_outputs": "probs"}, "Received: teacher_outputs='probs'"),
    ],
)
def test_bad_hyperparameters_are_named(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Distiller(models[1], models[0], **kwargs)


def test_bad_model_pairs_are_rejected(models):
    teacher, student = models
    with pytest.raises(ValueError, match="different models"):
        Distiller(student, student)
    with pytest.raises(ValueError, match=r"teacher output shape=\(5,\), student output shape=\(3,\)"):
        Distiller(student, tiny_model(classes=5))
    with pytest.raises(ValueError, match="student must output logits"):
        Distiller(tiny_model(softmax=True), teacher)
    with pytest.raises(ValueError, match="Received: teacher="):
        Distiller(student, "teacher.keras")


def test_unbuilt_shape_mismatch_fails_on_first_batch():
    class Head(keras.Model):
        def __init__(self, classes, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(classes)

        def call(self, x):
            return self.dense(x)

    distiller = compiled(Head(3), Head(4))
    with pytest.raises(ValueError, match=r"teacher output shape=\(4,\)"):
        distiller.fit(*tiny_data(), epochs=1, verbose=0)


def test_h5_checkpoint_is_refused_before_training(models, tmp_path):
    teacher, student = models
    before = [v.numpy().copy() for v in student.variables]
    callback = keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.h5"))
    with pytest.raises(ValueError, match=r"\.keras.*Received: filepath="):
        compiled(student, teacher).fit(*tiny_data(), epochs=1, verbose=0, callbacks=[callback])
    for old, var in zip(before, student.variables):
        np.testing.assert_array_equal(old, var.numpy())


def test_keras_checkpoint_works(models, tmp_path):
    teacher, student = models
    callback = keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras"))
    compiled(student, teacher).fit(*tiny_data(), epochs=1, verbose=0, callbacks=[callback])
    assert isinstance(keras.saving.load_model(tmp_path / "ckpt.keras"), Distiller)
