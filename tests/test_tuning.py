"""keras-tuner search over the temperature and alpha (`keras_kd.tuning`)."""

import json

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from conftest import counting_teacher, roundtrip, tiny_data, tiny_model

import keras_kd
from keras_kd import cli, losses, tuning
from keras_kd.datasets import load_mnist1d
from keras_kd.distiller import DEFAULT_ALPHA, DEFAULT_TEMPERATURE


def tiny_student(hp):
    return tiny_model(hidden=hp.Int("units", 4, 8, step=4), seed=2, name="student")


def _data():
    """96 training examples (3 batches of 32) and 32 validation ones (1)."""
    (x, y), (x_val, y_val) = tiny_data(n=96), tiny_data(n=32, seed=1)
    return x, y, (x_val, y_val)


BATCHES = 3 + 1  # Training and validation batches of `_data()`, of 32.


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 2-trial x 2-epoch random search with a call-counting teacher."""
    x, y, validation = _data()
    teacher, counter = counting_teacher()
    hypermodel = keras_kd.DistillerHyperModel(tiny_student, teacher, seed=0)
    directory = tmp_path_factory.mktemp("search")
    tuner = tuning.build_tuner(hypermodel, "random", max_trials=2, directory=directory)
    tuner.search(x, y, validation_data=validation, epochs=2, batch_size=32, verbose=0)
    return tuner, hypermodel, counter, validation, directory


def test_random_search_end_to_end(searched):
    tuner, _, _, validation, directory = searched
    records = tuning.trial_records(tuner)
    assert [r["status"] for r in records] == ["COMPLETED"] * 2
    for record in records:
        hps = record["hyperparameters"]
        assert 1.0 <= hps["temperature"] <= 20.0 and 0.0 <= hps["alpha"] <= 1.0
        assert hps["units"] in (4, 8) and 0.0 <= record["objective"] <= 1.0

    best = tuner.get_best_models()[0]
    assert isinstance(best, keras_kd.Distiller)
    predictions = best.predict(validation[0][:5], verbose=0)
    assert predictions.shape == (5, 3)
    best_hp = tuner.get_best_hyperparameters()[0].values
    assert best.temperature == pytest.approx(best_hp["temperature"])
    assert best.alpha == pytest.approx(best_hp["alpha"])

    # The best student, alone, with its hyperparameters next to it.
    path = directory / "best_student.keras"
    student = tuning.save_best_student(tuner, path)
    saved = json.loads((directory / "best_student.hyperparameters.json").read_text())
    assert saved["hyperparameters"] == pytest.approx(best_hp)
    assert saved["objective"]["name"] == "val_accuracy"
    assert saved["objective"]["value"] == pytest.approx(tuner.oracle.get_best_trials()[0].score)
    reloaded = keras.saving.load_model(path)
    assert not isinstance(reloaded, keras_kd.Distiller)
    for model in (reloaded, student):
        np.testing.assert_allclose(model.predict(validation[0][:5], verbose=0), predictions,
                                   rtol=1e-5, atol=1e-6)


def test_teacher_runs_once_per_search(searched, tmp_path):
    _, hypermodel, counter, _, _ = searched
    # 2 trials x 2 epochs: one pass over the training and validation data.
    assert int(counter.counts.runs.numpy()) == BATCHES
    assert counter.traces <= 2  # traced by the cache only, not per trial
    assert hypermodel.teacher_passes == 2

    # The counter counts: without the cache, the teacher runs on every batch.
    x, y, validation = _data()
    teacher, counter = counting_teacher()
    hypermodel = keras_kd.DistillerHyperModel(tiny_student, teacher, seed=0, cache=False)
    tuner = tuning.build_tuner(hypermodel, "random", max_trials=1, directory=tmp_path)
    tuner.search(x, y, validation_data=validation, epochs=2, batch_size=32, verbose=0)
    assert int(counter.counts.runs.numpy()) == 2 * BATCHES
    assert counter.traces >= 2  # the train and the test step


def test_conditional_space_builds_both_branches(tmp_path):
    teacher = tiny_model(hidden=32, seed=1, name="teacher")

    def build_student(hp):  # A conditional space of the user's own.
        depth = hp.Choice("depth", [1, 2])
        layers = [keras.Input((8,)), keras.layers.Dense(hp.Int("units_1", 4, 8, step=4), activation="relu")]
        with hp.conditional_scope("depth", [2]):
            if depth == 2:
                layers.append(keras.layers.Dense(hp.Int("units_2", 4, 8, step=4), activation="relu"))
        return keras.Sequential(layers + [keras.layers.Dense(3)], name="student")

    hypermodel = keras_kd.DistillerHyperModel(build_student, teacher, soft_loss=["kl", "mse"])
    # Creating the tuner builds every conditional branch of the space.
    tuner = tuning.build_tuner(hypermodel, "random", max_trials=2, directory=tmp_path)
    space = {hp.name: hp for hp in tuner.oracle.get_space().space}
    assert {"soft_loss", "temperature", "alpha", "depth", "units_1", "units_2"} <= set(space)
    assert [c.values for c in space["temperature"].conditions] == [["kl"]]

    for soft_loss, depth in (("kl", 2), ("mse", 1), ("mse", 2)):
        hp = tuner.oracle.get_space()
        hp.values.update(soft_loss=soft_loss, depth=depth, temperature=7.0, alpha=0.3)
        hp.ensure_active_values()
        distiller = hypermodel.build(hp)
        assert distiller.soft_loss == soft_loss and distiller.alpha == pytest.approx(0.3)
        assert len(distiller.student.layers) == depth + 1
        if soft_loss == "kl":
            assert distiller.temperature == pytest.approx(7.0)
        else:
            assert isinstance(distiller.soft_loss_fn, losses.LogitMatchingLoss)
            assert not hp.is_active("temperature")


class _EpochLog(keras.callbacks.Callback):
    ended = []  # Class-level: keras-tuner deep-copies callbacks per trial.

    def on_epoch_end(self, epoch, logs=None):
        _EpochLog.ended.append(epoch)


@pytest.mark.parametrize(
    "objective, validation, message",
    [
        (keras_tuner.Objective("val_f1", "max"), True, r"'val_accuracy'.*Received: objective='val_f1'"),
        ("val_accuracy", False, r"pass `validation_data=`.*Received: objective='val_accuracy'"),
    ],
)
def test_unknown_objective_fails_in_the_first_trial(objective, validation, message, tmp_path):
    x, y, validation_data = _data()
    hypermodel = keras_kd.DistillerHyperModel(tiny_student, tiny_model(hidden=32, seed=1))
    tuner = tuning.build_tuner(hypermodel, "random", max_trials=3, objective=objective, directory=tmp_path)
    _EpochLog.ended = []
    with pytest.raises(keras_tuner.errors.FatalValueError, match=message) as info:
        tuner.search(x, y, validation_data=validation_data if validation else None,
                     epochs=2, batch_size=32, callbacks=[_EpochLog()], verbose=0)
    assert len(tuner.oracle.trials) == 1 and _EpochLog.ended == []  # the first epoch's end
    for name in ("loss", "student_loss", "distillation_loss", "accuracy"):
        assert f"'{name}'" in str(info.value)


def test_tuner_without_objective_fails_before_training(tmp_path):
    x, y, validation = _data()
    hypermodel = keras_kd.DistillerHyperModel(tiny_student, tiny_model(hidden=32, seed=1))
    tuner = tuning.build_tuner(hypermodel, "random", max_trials=2, objective=None, directory=tmp_path)
    with pytest.raises(keras_tuner.errors.FatalValueError, match="DEFAULT_OBJECTIVE"):
        tuner.search(x, y, validation_data=validation, epochs=1, verbose=0)


@pytest.mark.parametrize("kind", ["bayesian", "hyperband"])
def test_bayesian_and_hyperband_search(kind, tmp_path):
    if kind == "bayesian":
        pytest.importorskip(
            "sklearn", reason="BayesianOptimization needs keras-tuner[bayesian]"
        )
    x, y, validation = _data()
    teacher, counter = counting_teacher()
    hypermodel = keras_kd.DistillerHyperModel(tiny_student, teacher, seed=0)
    # Hyperband, max_epochs=2 and factor 2: 2 one-epoch trials, the best
    # continued for a second epoch from its checkpoint, then 2 two-epoch trials.
    options = dict(max_epochs=2, factor=2) if kind == "hyperband" else dict(max_trials=2)
    tuner = tuning.build_tuner(hypermodel, kind, directory=tmp_path, **options)
    tuner.search(x, y, validation_data=validation, epochs=1, batch_size=32, verbose=0)
    records = tuning.trial_records(tuner)
    assert len(records) >= 2 and all(r["status"] == "COMPLETED" for r in records)
    if kind == "hyperband":
        assert any("tuner/trial_id" in r["tuner"] for r in records)  # a continued trial
    assert int(counter.counts.runs.numpy()) == BATCHES
    assert tuner.get_best_models()[0].predict(validation[0][:4], verbose=0).shape == (4, 3)


def test_bad_arguments_name_the_value():
    teacher = tiny_model(seed=1)
    with pytest.raises(ValueError, match=r"Received: temperature=\(0, 5\)"):
        keras_kd.DistillerHyperModel(tiny_student, teacher, temperature=(0, 5))
    with pytest.raises(ValueError, match=r"Received: alpha=\(0.5, 2\)"):
        keras_kd.DistillerHyperModel(tiny_student, teacher, alpha=(0.5, 2))
    with pytest.raises(ValueError, match=r"Received: soft_loss='l2'"):
        keras_kd.DistillerHyperModel(tiny_student, teacher, soft_loss="l2")
    with pytest.raises(ValueError, match="build_student"):
        keras_kd.DistillerHyperModel(tiny_model(), teacher)
    student = tiny_model(seed=2)
    hypermodel = keras_kd.DistillerHyperModel(lambda hp: student, teacher)
    hypermodel.build(keras_tuner.HyperParameters())
    with pytest.raises(ValueError, match="same model twice"):
        hypermodel.build(keras_tuner.HyperParameters())
    with pytest.raises(ValueError, match="Received: kind='grid'"):
        tuning.build_tuner(hypermodel, "grid")


# ---------------------------------------------------------------------- #
# soft_loss="mse": logit matching (Ba & Caruana, 2014)
# ---------------------------------------------------------------------- #
def test_logit_matching_loss_values():
    got = np.asarray(losses.logit_matching_loss([[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(got, [1.0 / 3.0], rtol=1e-6)
    # Blind to per-sample offsets, like softmax.
    shifted = losses.logit_matching_loss([[7.0, 6.0, 5.0]], [[-1.0, -1.0, -1.0]])
    np.testing.assert_allclose(shifted, got, rtol=1e-6)
    # The large-temperature limit of the KL loss (Hinton et al., 2015).
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(256, 10)), rng.normal(size=(256, 10))
    np.testing.assert_allclose(
        np.mean(losses.distillation_loss(t, s, 20.0)),
        np.mean(losses.logit_matching_loss(t, s)), rtol=2e-3,
    )
    loss = roundtrip(losses.LogitMatchingLoss(), None)
    assert float(loss([[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])) == pytest.approx(1.0 / 3.0)


def test_distiller_soft_loss_mse_trains_and_roundtrips(tmp_path):
    x, y = tiny_data(n=64)
    teacher = tiny_model(hidden=32, seed=1, name="teacher")
    distiller = keras_kd.Distiller(tiny_model(hidden=4, seed=2), teacher, alpha=0.0, soft_loss="mse")
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)
    logs = distiller.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    expected = np.mean(losses.logit_matching_loss(teacher.predict(x, verbose=0), distiller.predict(x, verbose=0)))
    assert logs["distillation_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert logs["loss"] == pytest.approx(logs["distillation_loss"], rel=1e-6)

    assert distiller.get_config()["soft_loss"] == "mse"
    assert keras_kd.Distiller(tiny_model(hidden=4, seed=3), teacher).soft_loss == "kl"
    reloaded = roundtrip(distiller, tmp_path)
    assert reloaded.soft_loss == "mse"
    assert isinstance(reloaded.soft_loss_fn, losses.LogitMatchingLoss)
    with pytest.raises(ValueError, match=r"Expected `soft_loss` to be one of \('kl', 'mse'\)\. Received: soft_loss='l2'"):
        keras_kd.Distiller(tiny_model(hidden=4, seed=3), teacher, soft_loss="l2")


# ---------------------------------------------------------------------- #
# keras-kd tune
# ---------------------------------------------------------------------- #
def test_cli_tune_reduced(mnist1d_data_dir, tmp_path, capsys):
    out = tmp_path / "tune"
    (out / "tuner").mkdir(parents=True)  # An earlier search, to be replaced.
    argv = ["tune", "--data-dir", str(mnist1d_data_dir), "--output", str(out),
            "--train-size", "300", "--trials", "2", "--epochs", "1",
            "--teacher-epochs", "1", "--verbose", "0"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert f"replacing the earlier search in {out / 'tuner'}" in printed.err
    for name in ("best_student.keras", "best_student.hyperparameters.json",
                 "results.json", "objective.png", "teacher.keras"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["teacher_passes"] == 2
    assert results["settings"]["train_examples"] + results["settings"]["validation_examples"] == 300

    # Every trial's numbers are the tuner's own (its trial files).
    assert len(results["trials"]) == 2
    for record in results["trials"]:
        trial = json.loads((out / "tuner" / f"trial_{record['trial_id']}" / "trial.json").read_text())
        assert record["objective"] == pytest.approx(trial["score"])
        assert record["hyperparameters"] == pytest.approx(trial["hyperparameters"]["values"])
        assert f"{record['objective']:.4f}" in printed.out
    best = max(results["trials"], key=lambda r: r["objective"])
    assert results["best"]["trial_id"] == best["trial_id"]

    # The test accuracies are those of the saved student, measured again.
    x_test, y_test = load_mnist1d("test")
    student = keras.saving.load_model(out / "best_student.keras")
    accuracy = np.mean(np.argmax(student.predict(x_test, verbose=0), -1) == y_test)
    assert results["best"]["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert results["default"]["hyperparameters"] == {
        "temperature": DEFAULT_TEMPERATURE, "alpha": DEFAULT_ALPHA}
    assert "best: T=" in printed.out
    assert f"default: T={DEFAULT_TEMPERATURE:g}, alpha={DEFAULT_ALPHA:g}" in printed.out


def test_report_table_and_plot_without_alpha(tmp_path):
    # A search on unlabelled data (`--transfer`) searches T alone.
    trials = [
        {"trial_id": str(i), "hyperparameters": {"temperature": t}, "objective": v}
        for i, (t, v) in enumerate([(1.5, 0.71), (4.0, 0.75), (12.0, 0.69)])
    ]
    report = {
        "tuner": "random", "objective": {"name": "val_accuracy", "direction": "max"},
        "trials": trials, "best": dict(trials[1], test_accuracy=0.74),
        "default": {"hyperparameters": {"temperature": 1.5}, "objective": 0.71, "test_accuracy": 0.7},
        "settings": {"temperature_range": [1.0, 20.0], "trials": 3, "epochs": 2, "teacher_passes": 2},
    }
    table = tuning.format_results(report)
    assert "    1       4       -        0.7500  <- best" in table
    assert "best: T=4: val_accuracy 0.7500, test accuracy 0.7400" in table
    assert "default: T=1.5: val_accuracy 0.7100" in table
    path = tuning.plot_objective(report, tmp_path / "objective.png")
    assert (tmp_path / "objective.png").stat().st_size > 0 and path.endswith(".png")
