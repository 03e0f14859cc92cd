import json
import warnings

import keras
import numpy as np
import pytest
from conftest import json_config, roundtrip, tiny_data, tiny_model

from keras_kd import Distiller, cli
from keras_kd import distiller as kd_distiller
from keras_kd.datasets import load_mnist1d


def small_and_large():
    return tiny_model(hidden=4, seed=1, name="small"), tiny_model(hidden=64, seed=2, name="large")


def test_defaults_are_resolved_per_mode():
    small, large = small_and_large()
    standard = Distiller(tiny_model(hidden=2), large)
    assert (standard.temperature, standard.alpha) == (
        kd_distiller.DEFAULT_TEMPERATURE, kd_distiller.DEFAULT_ALPHA)
    reverse = Distiller(large, small, mode="reverse")
    assert (reverse.mode, reverse.temperature, reverse.alpha) == (
        "reverse", kd_distiller.REVERSE_TEMPERATURE, kd_distiller.REVERSE_ALPHA)
    assert kd_distiller.REVERSE_ALPHA > kd_distiller.DEFAULT_ALPHA
    explicit = Distiller(tiny_model(hidden=64, seed=3), small, mode="reverse",
                         temperature=7.0, alpha=0.2)
    assert (explicit.temperature, explicit.alpha) == (7.0, 0.2)
    with pytest.raises(ValueError, match=r"\('standard', 'reverse'\).*Received: mode='inverse'"):
        Distiller(large, small, mode="inverse")


def test_standard_mode_warns_about_a_smaller_teacher():
    small, large = small_and_large()
    with pytest.warns(UserWarning, match=r"teacher 'small' .* smaller than the student "
                      r"'large'.*mode='reverse'"):
        Distiller(large, small)


def test_reverse_mode_warns_about_a_larger_teacher():
    small, large = small_and_large()
    with pytest.warns(UserWarning, match=r"mode='reverse' expects a teacher smaller.*"
                      r"'large'.*use mode='standard'"):
        Distiller(small, large, mode="reverse")


def test_no_warning_when_sizes_suit_the_mode():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small, large = small_and_large()
        Distiller(small, large)
        Distiller(tiny_model(hidden=64, seed=3), small, mode="reverse")
        Distiller(tiny_model(seed=4), tiny_model(seed=5))  # same size: self-distillation


def test_unbuilt_models_are_checked_on_the_first_batch():
    class Head(keras.Model):
        def __init__(self, hidden, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(hidden)
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    distiller = Distiller(Head(64, name="big"), Head(2, name="tiny"))
    distiller.compile(optimizer="adam")
    with pytest.warns(UserWarning, match="'tiny'.*mode='reverse'"):
        distiller.fit(*tiny_data(), epochs=1, verbose=0)


def test_reverse_distiller_trains_and_round_trips(tmp_path):
    small, large = small_and_large()
    x, y = tiny_data()
    distiller = Distiller(large, small, mode="reverse")
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=2, verbose=0)
    assert {"loss", "student_loss", "distillation_loss", "accuracy"} <= set(history.history)
    loaded = roundtrip(distiller, tmp_path)
    assert isinstance(loaded, Distiller)
    assert (loaded.mode, loaded.temperature, loaded.alpha) == (
        "reverse", distiller.temperature, distiller.alpha)
    assert json_config(loaded) == json_config(distiller)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               rtol=1e-6)


def test_reverse_mode_without_labels_says_to_pass_them():
    small, large = small_and_large()
    distiller = Distiller(large, small, mode="reverse")
    distiller.compile(optimizer="adam")
    with pytest.warns(UserWarning, match=r"pass labelled data"):
        distiller.fit(tiny_data()[0], epochs=1, verbose=0)


def test_cli_demo_reverse_reduced(mnist1d_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folder lands here
    argv = ["demo", "--reverse", "--data-dir", str(mnist1d_data_dir),
            "--teacher-epochs", "1", "--student-epochs", "1", "--train-size", "256",
            "--verbose", "0"]
    assert cli.main(argv) == 0
    out = tmp_path / "saved_models" / "demo_reverse"
    assert not (tmp_path / "saved_models" / "demo").exists()
    printed = capsys.readouterr().out
    assert "CNN reverse-distilled" in printed and "Reverse distillation" in printed
    for name in ("teacher.keras", "student.keras", "report.json", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "cnn_scratch", "cnn_reverse"}
    settings = report["settings"]
    assert (settings["temperature"], settings["alpha"]) == (
        kd_distiller.REVERSE_TEMPERATURE, kd_distiller.REVERSE_ALPHA)
    models = report["models"]
    assert models["teacher"]["params"] < models["cnn_reverse"]["params"]
    x_test, y_test = load_mnist1d("test")
    cnn = keras.saving.load_model(out / "student.keras")
    acc = np.mean(np.argmax(cnn.predict(x_test, verbose=0), -1) == y_test)
    assert models["cnn_reverse"]["test_accuracy"] == pytest.approx(acc)
    assert report["reverse_gain"] == pytest.approx(
        acc - models["cnn_scratch"]["test_accuracy"])


def test_cli_rejects_ensemble_with_reverse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--reverse", "--ensemble", "2"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
