import json

import keras
import numpy as np
import pytest
from conftest import (
    assert_unchanged,
    fixed_logits_model,
    json_config,
    numpy_soft_loss,
    roundtrip,
    snapshot,
    tiny_data,
    tiny_model,
)

import keras_kd
from keras_kd import Distiller, cli
from keras_kd.datasets import load_mnist1d

TEACHER_LOGITS = np.array([[[4.0, 0.0, 0.0]], [[0.0, 4.0, 0.0]]])  # (teacher, batch, class)


def np_softmax(z, temperature=1.0):
    z = np.asarray(z, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_ensemble_target(logits, weights, temperature, average):
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    if average == "probabilities":
        return sum(wi * np_softmax(z, temperature) for wi, z in zip(w, logits))
    return np_softmax(sum(wi * np.asarray(z) for wi, z in zip(w, logits)), temperature)


def ensemble(student, teachers, **kwargs):
    distiller = Distiller(student, teachers, **kwargs)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    return distiller


@pytest.mark.parametrize(
    "average, golden",
    [("probabilities", [0.4912, 0.4912, 0.0177]), ("logits", [0.4683, 0.4683, 0.0634])],
)
def test_golden_soft_targets(average, golden):
    want = np_ensemble_target(TEACHER_LOGITS, [1, 1], 1.0, average)
    np.testing.assert_allclose(want, [golden], atol=1e-4)  # the values
    z = keras_kd.ensemble_logits(list(TEACHER_LOGITS), temperature=1.0, average=average)
    np.testing.assert_allclose(keras_kd.soft_targets(z, 1.0), want, atol=1e-6)

    # The same through a Distiller whose teachers output x @ diag(z) = z for x = 1.
    teachers = [fixed_logits_model(np.diag(z[0]), name=f"t{i}")
                for i, z in enumerate(TEACHER_LOGITS)]
    distiller = Distiller(tiny_model(inputs=3, hidden=4), teachers, temperature=1.0,
                          ensemble_average=average)
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(
        keras_kd.soft_targets(distiller.teacher_logits(x), 1.0), want, atol=1e-6
    )


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_weighted_targets_and_loss_match_numpy(average):
    rng = np.random.default_rng(0)
    logits = [rng.normal(scale=3, size=(5, 4)) for _ in range(3)]
    weights, temperature = [2.0, 0.0, 1.0], 3.0
    z = keras_kd.ensemble_logits(logits, weights, temperature, average)
    want = np_ensemble_target(logits, weights, temperature, average)
    np.testing.assert_allclose(keras_kd.soft_targets(z, temperature), want, atol=1e-6)

    # The Distiller's soft loss is T^2 KL(ensemble target || student).
    x, y = tiny_data(n=32, inputs=4, classes=4)
    teachers = [fixed_logits_model(rng.normal(size=(4, 4)), name=f"t{i}") for i in range(3)]
    student = tiny_model(inputs=4, classes=4, hidden=4)
    distiller = ensemble(student, teachers, teacher_weights=weights,
                         temperature=temperature, alpha=0.0, ensemble_average=average)
    got = distiller.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    teacher_z = [t.predict(x, verbose=0) for t in teachers]
    target = np_ensemble_target(teacher_z, weights, temperature, average)
    s = student.predict(x, verbose=0)
    log_q = np.log(np_softmax(s, temperature))
    kl = (target * (np.log(target) - log_q)).sum(-1)
    np.testing.assert_allclose(got["distillation_loss"], temperature**2 * kl.mean(), rtol=1e-4)


def test_probability_teachers_are_not_softmaxed_twice():
    w = np.array([[3.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.0, 2.0]])
    x = np.eye(3, dtype="float32")
    as_logits = Distiller(tiny_model(inputs=3), [fixed_logits_model(w), fixed_logits_model(-w)],
                          temperature=2.0)
    mixed = Distiller(tiny_model(inputs=3), [fixed_logits_model(w, softmax=True),
                                             fixed_logits_model(-w)], temperature=2.0)
    np.testing.assert_allclose(keras_kd.soft_targets(mixed.teacher_logits(x), 2.0),
                               keras_kd.soft_targets(as_logits.teacher_logits(x), 2.0),
                               atol=1e-6)


def test_mismatched_teacher_is_named_at_construction():
    student = tiny_model(name="student")
    teachers = [tiny_model(name="good"), tiny_model(classes=5, name="odd_one")]
    with pytest.raises(ValueError, match=r"'student' output shape=\(3,\).*"
                       r"teacher 0 'good' output shape=\(3,\).*"
                       r"teacher 1 'odd_one' output shape=\(5,\)"):
        Distiller(student, teachers)


def test_mismatched_unbuilt_teachers_fail_on_first_batch():
    class Head(keras.Model):
        def __init__(self, classes, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(classes)

        def call(self, x):
            return self.dense(x)

    distiller = ensemble(Head(3, name="s"), [Head(3, name="a"), Head(4, name="b")])
    with pytest.raises(ValueError, match=r"teacher 0 'a' output shape=\(3,\), "
                       r"teacher 1 'b' output shape=\(4,\)"):
        distiller.fit(*tiny_data(), epochs=1, verbose=0)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0, -0.5], r"non-negative.*Received: teacher_weights=\[1.0, -0.5\]"),
        ([1.0], r"one weight per teacher \(2 teachers\).*Received: teacher_weights=\[1.0\]"),
        ([1, 2, 3], r"Received: teacher_weights=\[1, 2, 3\] \(3 weights\)"),
        ([0, 0], r"at least one positive.*Received: teacher_weights=\[0, 0\]"),
        ([1, float("nan")], r"finite.*Received: teacher_weights=\[1, nan\]"),
    ],
)
def test_bad_weights_are_rejected(weights, message):
    with pytest.raises(ValueError, match=message):
        Distiller(tiny_model(hidden=4), [tiny_model(seed=1), tiny_model(seed=2)],
                  teacher_weights=weights)


def test_bad_ensembles_are_rejected():
    student, teacher = tiny_model(hidden=4), tiny_model(seed=1)
    with pytest.raises(ValueError, match="Received: ensemble_average='median'"):
        Distiller(student, [teacher, tiny_model(seed=2)], ensemble_average="median")
    with pytest.raises(ValueError, match="different models"):
        Distiller(student, [teacher, student])
    with pytest.raises(ValueError, match="each teacher of the ensemble once"):
        Distiller(student, [teacher, teacher])
    with pytest.raises(ValueError, match=r"non-empty list.*Received: teacher=\[\]"):
        Distiller(student, [])


def test_every_teacher_is_unchanged_by_fit():
    teachers = [tiny_model(hidden=32, seed=i, norm=True, name=f"t{i}") for i in range(3)]
    before = [snapshot(t) for t in teachers]
    student = tiny_model(hidden=4, seed=9)
    student_before = snapshot(student)
    x, y = tiny_data()
    ensemble(student, teachers).fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(not t.trainable for t in teachers)
    for old, teacher in zip(before, teachers):
        assert any("moving_mean" in path for path, _ in old)
        assert_unchanged(old, teacher)
    with pytest.raises(AssertionError):
        assert_unchanged(student_before, student)


def test_api_of_single_teacher_and_ensemble():
    teachers = [tiny_model(seed=i, name=f"t{i}") for i in range(2)]
    single = Distiller(tiny_model(hidden=4), teachers[0])
    assert single.teacher is teachers[0] and list(single.teachers) == [teachers[0]]
    group = Distiller(tiny_model(hidden=4), teachers)
    assert list(group.teachers) == teachers
    with pytest.raises(AttributeError, match="distiller.teachers"):
        group.teacher


def test_ensemble_round_trips_through_keras_file(tmp_path):
    teachers = [tiny_model(hidden=32, seed=i, norm=True, name=f"t{i}") for i in range(3)]
    distiller = ensemble(tiny_model(hidden=4, seed=9), teachers, teacher_weights=[1, 2, 1],
                         ensemble_average="logits", temperature=3.0)
    x, y = tiny_data()
    distiller.fit(x, y, epochs=1, verbose=0)
    loaded = roundtrip(distiller, tmp_path)
    assert isinstance(loaded, Distiller) and len(loaded.teachers) == 3
    assert json_config(loaded) == json_config(distiller)
    config = loaded.get_config()
    assert (config["teacher_weights"], config["ensemble_average"]) == ([1.0, 2.0, 1.0], "logits")
    assert "teacher" not in config and not any(t.trainable for t in loaded.teachers)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               rtol=1e-6)
    np.testing.assert_allclose(loaded.teacher_logits(x), distiller.teacher_logits(x), rtol=1e-6)
    assert np.isfinite(loaded.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_single_teacher_config_is_backwards_compatible(models, tmp_path):
    teacher, student = models
    config = Distiller(student, teacher).get_config()
    assert "teacher" in config and "teachers" not in config
    assert {"teacher_weights", "ensemble_average"}.isdisjoint(config)
    # A config written before ensembles and modes existed still loads.
    old = {k: v for k, v in config.items() if k != "mode"}
    assert Distiller.from_config(old).mode == "standard"


def test_cli_demo_ensemble_and_distill_reduced(mnist1d_data_dir, tmp_path, capsys):
    out = tmp_path / "ens"
    argv = ["demo", "--ensemble", "2", "--output", str(out),
            "--data-dir", str(mnist1d_data_dir), "--teacher-epochs", "1",
            "--student-epochs", "1", "--distill-epochs", "1", "--train-size", "256",
            "--transfer-size", "512", "--verbose", "0"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert "distilled, ensemble (MLP)" in printed.out and "Ensemble of 2" in printed.out
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {
        "teacher_0", "teacher_1", "teacher_ensemble", "student_scratch",
        "student_single", "student_ensemble",
    }
    assert report["settings"]["teacher_seeds"] == [0, 1]
    x_test, y_test = load_mnist1d("test")
    student = keras.saving.load_model(out / "student.keras")
    acc = np.mean(np.argmax(student.predict(x_test, verbose=0), -1) == y_test)
    assert report["models"]["student_ensemble"]["test_accuracy"] == pytest.approx(acc)
    assert report["ensemble_gain"] == pytest.approx(
        acc - report["models"]["student_single"]["test_accuracy"])

    # Saved teachers are reused, and a repeated --teacher distils the ensemble.
    assert cli.main(argv) == 0
    assert "reusing the teacher 1" in capsys.readouterr().err
    argv = ["distill", "--teacher", str(out / "teacher_0.keras"), "--teacher",
            str(out / "teacher_1.keras"), "--output", str(tmp_path / "d"), "--epochs", "1",
            "--data-dir", str(mnist1d_data_dir), "--verbose", "0"]
    assert cli.main(argv) == 0
    assert "distilled student test accuracy" in capsys.readouterr().out
    assert (tmp_path / "d" / "student.keras").exists()


def test_soft_loss_single_teacher_unchanged():
    # One teacher in a list is the single-teacher case, exactly.
    teacher, student = tiny_model(seed=1), tiny_model(seed=2, hidden=4)
    x, y = tiny_data()
    got = ensemble(student, [teacher], alpha=0.0, temperature=2.0).evaluate(x, y, return_dict=True, verbose=0)
    want = numpy_soft_loss(teacher.predict(x, verbose=0), student.predict(x, verbose=0), 2.0)
    np.testing.assert_allclose(got["loss"], want.mean(), rtol=1e-4)
