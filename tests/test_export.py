"""`keras_kd.export_student` and `keras-kd export`: SavedModel and TFLite.

Tolerance, both formats: `rtol=1e-5, atol=1e-5` on the logits. Neither is
bit-exact: the SavedModel runs the batch in one call (other matmul
blocking than `predict`), and the float32 TFLite model runs other kernels
(XNNPACK). On the trained MNIST-1D MLP student (logits up to about 50)
the largest differences over 256 test samples were 1.1e-5 (SavedModel)
and 1.5e-5 (TFLite), and every predicted class was the same.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_data, tiny_model

import keras_kd
from keras_kd import Distiller
from keras_kd import cli


def tflite_predict(path, x):
    with warnings.catch_warnings():  # tf.lite.Interpreter is deprecated.
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    (inputs,), (outputs,) = (
        interpreter.get_input_details(), interpreter.get_output_details())
    interpreter.resize_tensor_input(inputs["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


@pytest.fixture(scope="module")
def distiller():
    distiller = Distiller(tiny_model(seed=2, name="student"), tiny_model(hidden=32, seed=1))
    distiller.compile()
    distiller.fit(*tiny_data(), epochs=1, verbose=0)
    return distiller


def test_savedmodel_and_tflite_predict_like_the_student(distiller, tmp_path, capsys):
    x = tiny_data(n=32, seed=1)[0]
    want = distiller.student.predict(x, verbose=0)

    # A Distiller exports its student; an earlier export is replaced.
    saved = tmp_path / "student_savedmodel"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"old")
    exported = keras_kd.export_student(distiller, saved)
    assert exported == keras_kd.ExportedStudent(str(saved), "savedmodel",
                                                exported.size_bytes)
    assert f"replacing {saved}" in capsys.readouterr().err
    assert exported.size_bytes == sum(
        f.stat().st_size for f in saved.rglob("*") if f.is_file())
    loaded = tf.saved_model.load(str(saved))
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5)

    # The command line exports a `.keras` file (here a Distiller's) to TFLite.
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    tflite = tmp_path / "student.tflite"
    tflite.write_bytes(b"old")
    assert cli.main(["export", str(path), "--format", "tflite",
                     "--output", str(tflite)]) == 0
    printed = capsys.readouterr()
    size = tflite.stat().st_size
    assert f"({size:,} bytes)" in printed.out and "replacing" in printed.err
    assert 1000 < size < 20000
    np.testing.assert_allclose(tflite_predict(tflite, x), want, rtol=1e-5, atol=1e-5)


def test_export_refuses_bad_input_before_writing(distiller, tmp_path):
    with pytest.raises(ValueError, match=r"one of \('savedmodel', 'tflite'\)\. "
                                         r"Received: format='onnx'"):
        keras_kd.export_student(distiller, tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match=r"Received: model_or_path='student'"):
        keras_kd.export_student("student", tmp_path / "x")
    with pytest.raises(ValueError, match=r"Received: model_or_path=.*missing\.keras"):
        keras_kd.export_student(str(tmp_path / "missing.keras"), tmp_path / "x")
    with pytest.raises(ValueError, match="Received: model_or_path=42"):
        keras_kd.export_student(42, tmp_path / "x")
    # A folder that is not an earlier export is left alone.
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"cat")
    for path, format in ((tmp_path / "photos", "savedmodel"),
                         (tmp_path / "photos", "tflite")):
        with pytest.raises(ValueError, match="left alone. Received: path="):
            keras_kd.export_student(distiller, path, format=format)
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"cat"


def test_cli_export_default_output_and_errors(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(
        keras_kd.export, "export_student",
        lambda model, path, format: calls.append((model, path, format))
        or keras_kd.ExportedStudent(path, format, 123))
    assert cli.main(["export", "models/student.keras"]) == 0
    assert calls[-1] == ("models/student.keras", "models/student_savedmodel",
                         "savedmodel")
    assert "(123 bytes)" in capsys.readouterr().out
    cli.main(["export", "student.keras", "--format", "tflite"])
    assert calls[-1][1] == "student.tflite"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "student.keras", "--format", "onnx"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
