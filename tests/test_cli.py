import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_kd import cli
from keras_kd.datasets import load_mnist1d


def test_demo_end_to_end_reduced(mnist1d_data_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--data-dir", str(mnist1d_data_dir),
            "--teacher-epochs", "2", "--student-epochs", "1", "--distill-epochs", "1",
            "--train-size", "512", "--transfer-size", "1024", "--verbose", "0"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert "student distilled (MLP)" in printed.out and "gap" in printed.out
    for name in ("teacher.keras", "student.keras", "report.json", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "mnist1d"
    models = report["models"]
    assert set(models) == {"teacher", "student_scratch", "student_distilled"}

    # Every number in the report is checked against an independent measurement.
    x_test, y_test = load_mnist1d("test")
    student = keras.saving.load_model(out / "student.keras")
    teacher = keras.saving.load_model(out / "teacher.keras")
    for key, model in (("student_distilled", student), ("teacher", teacher)):
        acc = np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
        assert models[key]["test_accuracy"] == pytest.approx(acc, abs=1e-9)
        assert models[key]["params"] == model.count_params()
        assert models[key]["latency_ms"] > 0
    assert models["student_distilled"]["params"] == 100 * 40 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert models["student_distilled"]["size_bytes"] < models["teacher"]["size_bytes"] / 5
    acc = {k: v["test_accuracy"] for k, v in models.items()}
    gap = (acc["student_distilled"] - acc["student_scratch"]) / (acc["teacher"] - acc["student_scratch"])
    assert report["gap_closed"] == pytest.approx(gap)
    assert report["settings"]["train_examples"] == 512

    # A second run reuses the teacher and says what it replaces.
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "reusing the teacher" in err and "replacing" in err and "student.keras" in err
    assert json.loads((out / "report.json").read_text())["settings"]["teacher_reused"]


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("demo", "train-teacher", "distill"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["distill", "--teacher", "missing.keras"], "Received: --teacher='missing.keras'"),
        (["train-teacher", "--dataset", "no_such_dataset"], "no_such_dataset"),
        (["demo", "--temperature", "-1"], "Received: temperature=-1"),
        (["demo", "--alpha", "2"], "Received: alpha=2"),
    ],
)
def test_bad_cli_input_is_one_clear_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_with_and_without_cache_is_the_same_training(mnist1d_data_dir, tmp_path):
    # Reduced demo twice, each training its own teacher: `--no-cache` runs
    # the teacher every batch, on the same examples in the same order.
    argv = ["demo", "--data-dir", str(mnist1d_data_dir), "--teacher-epochs", "1",
            "--student-epochs", "1", "--distill-epochs", "2", "--train-size", "256",
            "--transfer-size", "512", "--verbose", "0"]
    assert cli.main(argv + ["--output", str(tmp_path / "cached")]) == 0
    assert cli.main(argv + ["--output", str(tmp_path / "live"), "--no-cache"]) == 0
    for name in ("teacher.keras", "student.keras"):
        cached = keras.saving.load_model(tmp_path / "cached" / name).get_weights()
        live = keras.saving.load_model(tmp_path / "live" / name).get_weights()
        for a, b in zip(cached, live):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    settings = [json.loads((tmp_path / d / "report.json").read_text())["settings"]
                for d in ("cached", "live")]
    assert [s["teacher_outputs_cached"] for s in settings] == [True, False]


def test_no_gap_to_close_is_said_not_nan():
    from keras_kd import demo

    assert demo.gap_closed(0.98, 0.60, 0.80) == pytest.approx(0.2 / 0.38)
    assert demo.gap_closed(0.50, 0.60, 0.70) is None  # teacher below scratch
    assert "no gap to close" in demo._gap_text({"gap_closed": None}, "teacher")
