"""Every bad input gets a clear answer, before any training step.

Each row of a table is one bad input and the answer expected: the
exception type and a pattern of its message, which names the argument and
the value received (Keras' form: "Expected ... Received: name=value").
Rows that train check that the student's weights did not change.
"""

import re
import types
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_unchanged, snapshot, tiny_data, tiny_model

import keras_kd
from keras_kd import Distiller
from keras_kd import _files
from keras_kd import cli
from keras_kd import demo

NAN = float("nan")


@pytest.fixture
def ctx(tmp_path):
    """Models, data and a folder for one row."""
    return types.SimpleNamespace(
        teacher=tiny_model(hidden=32, seed=1, name="teacher"),
        student=tiny_model(seed=2, name="student"),
        data=tiny_data(),
        tmp=tmp_path,
    )


def distiller(ctx, **kwargs):
    d = Distiller(ctx.student, ctx.teacher, **kwargs)
    d.compile(metrics=["accuracy"])
    return d


def fit(ctx, x=None, y=None, **kwargs):
    x0, y0 = ctx.data
    d = distiller(ctx)
    return d.fit(x0 if x is None else x, y0 if y is None else y,
                 verbose=0, shuffle=False, **kwargs)


def dataset(ctx, transform):
    return transform(tf.data.Dataset.from_tensor_slices(ctx.data))


def with_nan_at(ctx, row, value=NAN):
    x = ctx.data[0].copy()
    x[row, 0] = value
    return x


def weights_nan_at(row, n=71):
    # A NaN *input* need not reach the loss: TensorFlow's fused
    # MatMul+BiasAdd+Relu (oneDNN, TF 2.21) maps it to 0. A NaN sample
    # weight always does.
    weights = np.ones(n, "float32")
    weights[row] = NAN
    return weights


def nan_teacher(ctx):
    ctx.teacher.layers[-1].set_weights(
        [np.full_like(w, NAN) for w in ctx.teacher.layers[-1].get_weights()])
    return fit(ctx)


def lambda_model_file(ctx):
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    path = ctx.tmp / "lambda.keras"
    model.save(path)
    return path


def corrupt_file(ctx, name="corrupt.keras", content=b"not a zip archive"):
    path = ctx.tmp / name
    path.write_bytes(content)
    return path


def zip_without_model(ctx):
    path = ctx.tmp / "notes.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "no model here")
    return path


def folder(ctx, name):
    (ctx.tmp / name).mkdir()
    return ctx.tmp / name


# (id, action, exception, message pattern, trains?)
ROWS = [
    # --- hyperparameters, wherever they are taken ---
    ("temperature=0", lambda c: Distiller(c.student, c.teacher, temperature=0),
     ValueError, r"Received: temperature=0$"),
    ("temperature<0", lambda c: Distiller(c.student, c.teacher, temperature=-2.5),
     ValueError, r"Received: temperature=-2.5"),
    ("temperature=nan", lambda c: Distiller(c.student, c.teacher, temperature=NAN),
     ValueError, r"Received: temperature=nan"),
    ("temperature=inf", lambda c: Distiller(c.student, c.teacher, temperature=float("inf")),
     ValueError, r"Received: temperature=inf"),
    ("temperature=str", lambda c: Distiller(c.student, c.teacher, temperature="hot"),
     ValueError, r"Received: temperature='hot'"),
    ("temperature=bool", lambda c: Distiller(c.student, c.teacher, temperature=True),
     ValueError, r"Received: temperature=True"),
    ("loss temperature", lambda c: keras_kd.DistillationLoss(temperature=0),
     ValueError, r"Received: temperature=0"),
    ("function temperature", lambda c: keras_kd.distillation_loss([[1.0]], [[1.0]], -1),
     ValueError, r"Received: temperature=-1"),
    ("alpha<0", lambda c: Distiller(c.student, c.teacher, alpha=-0.1),
     ValueError, r"Received: alpha=-0.1"),
    ("alpha>1", lambda c: Distiller(c.student, c.teacher, alpha=1.5),
     ValueError, r"Received: alpha=1.5"),
    ("alpha=nan", lambda c: Distiller(c.student, c.teacher, alpha=NAN),
     ValueError, r"Received: alpha=nan"),
    ("alpha=str", lambda c: Distiller(c.student, c.teacher, alpha="0.5"),
     ValueError, r"Received: alpha='0.5'"),
    ("teacher_outputs", lambda c: Distiller(c.student, c.teacher, teacher_outputs="probs"),
     ValueError, r"Received: teacher_outputs='probs'"),
    ("mode", lambda c: Distiller(c.student, c.teacher, mode="backwards"),
     ValueError, r"Received: mode='backwards'"),
    ("ensemble_average", lambda c: Distiller(
        c.student, [c.teacher, tiny_model(hidden=32, seed=3)], ensemble_average="max"),
     ValueError, r"Received: ensemble_average='max'"),
    ("teacher_weights length", lambda c: Distiller(
        c.student, [c.teacher, tiny_model(hidden=32, seed=3)], teacher_weights=[1, 2, 3]),
     ValueError, r"Received: teacher_weights=\[1, 2, 3\]"),
    ("teacher_weights negative", lambda c: Distiller(
        c.student, [c.teacher, tiny_model(hidden=32, seed=3)], teacher_weights=[1, -1]),
     ValueError, r"Received: teacher_weights=\[1, -1\]"),
    ("demo alpha", lambda c: demo.run_demo(str(c.tmp), alpha=2),
     ValueError, r"Received: alpha=2"),
    # --- models ---
    ("teacher is student", lambda c: Distiller(c.student, c.student),
     ValueError, r"two different models.*Received: teacher=student='student'"),
    ("classes differ", lambda c: Distiller(c.student, tiny_model(classes=5, name="t5")),
     ValueError, r"Received: teacher output shape=\(5,\), student output shape=\(3,\)"),
    ("inputs differ", lambda c: Distiller(c.student, tiny_model(inputs=5, name="t")),
     ValueError, r"Received: teacher input shape=\(5,\), student input shape=\(8,\)"),
    ("teacher is a path", lambda c: Distiller(c.student, "teacher.keras"),
     ValueError, r"Received: teacher='teacher.keras'"),
    ("teacher is None", lambda c: Distiller(c.student, None),
     ValueError, r"Received: teacher=None"),
    ("student not a model", lambda c: Distiller("student", c.teacher),
     ValueError, r"Received: student='student'"),
    ("student ends in softmax", lambda c: Distiller(tiny_model(softmax=True, name="s"), c.teacher),
     ValueError, r"must output logits.*Received: student='s'"),
    ("empty ensemble", lambda c: Distiller(c.student, []),
     ValueError, r"non-empty list.*Received: teacher=\[\]"),
    ("ensemble repeats a teacher", lambda c: Distiller(c.student, [c.teacher, c.teacher]),
     ValueError, r"Received: teacher=\['teacher', 'teacher'\]"),
    ("ensemble classes differ", lambda c: Distiller(
        c.student, [c.teacher, tiny_model(classes=4, name="t4")]),
     ValueError, r"teacher 1 't4' output shape=\(4,\)"),
    ("compile loss=", lambda c: Distiller(c.student, c.teacher).compile(loss="mse"),
     ValueError, r"student_loss=.*Received: loss='mse'"),
    # --- data given to fit / evaluate ---
    ("empty arrays", lambda c: fit(c, c.data[0][:0], c.data[1][:0]),
     ValueError, r"at least one sample.*Received: x=ndarray of shape \(0, 8\)"),
    ("empty dataset", lambda c: distiller(c).fit(dataset(c, lambda d: d.take(0).batch(8)), verbose=0),
     ValueError, r"Received: x=a tf.data.Dataset of cardinality 0"),
    ("dataset empty after filter", lambda c: distiller(c).fit(
        dataset(c, lambda d: d.filter(lambda x, y: y > 99).batch(8)), verbose=0),
     ValueError, r"yielded none in the first epoch.*Received: x=a tf.data.Dataset of unknown cardinality"),
    ("evaluate empty", lambda c: distiller(c).evaluate(c.data[0][:0], c.data[1][:0], verbose=0),
     ValueError, r"Received: x=ndarray of shape \(0, 8\)"),
    ("evaluate empty after filter", lambda c: distiller(c).evaluate(
        dataset(c, lambda d: d.filter(lambda x, y: y > 99).batch(8)), verbose=0),
     ValueError, r"at least one batch.*Received: x=a tf.data.Dataset of unknown cardinality"),
    ("empty validation_data", lambda c: fit(c, validation_data=(c.data[0][:0], c.data[1][:0])),
     ValueError, r"Received: validation_data=ndarray of shape \(0, 8\)"),
    ("batch_size=0", lambda c: fit(c, batch_size=0),
     ValueError, r"Received: batch_size=0"),
    ("batch_size<0", lambda c: fit(c, batch_size=-4),
     ValueError, r"Received: batch_size=-4"),
    ("batch_size float", lambda c: fit(c, batch_size=2.5),
     ValueError, r"Received: batch_size=2.5"),
    ("evaluate batch_size=0", lambda c: distiller(c).evaluate(*c.data, batch_size=0, verbose=0),
     ValueError, r"Received: batch_size=0"),
    ("steps_per_epoch=0", lambda c: fit(c, steps_per_epoch=0),
     ValueError, r"Received: steps_per_epoch=0"),
    ("epochs<0", lambda c: fit(c, epochs=-1),
     ValueError, r"Received: epochs=-1"),
    ("inputs of another shape", lambda c: fit(c, x=c.data[0][:, :5]),
     ValueError, r"expected axis -1 of input shape to have value 8.*\(None, 5\)"),
    ("labels out of range", lambda c: fit(c, y=c.data[1] + 7),
     tf.errors.InvalidArgumentError, r"label value of \d+ which is outside the valid range"),
    ("h5 checkpoint", lambda c: fit(c, callbacks=[keras.callbacks.ModelCheckpoint(str(c.tmp / "c.h5"))]),
     ValueError, r"Received: filepath='.*c\.h5'"),
    # --- non-finite values: training stops at the step, before its update ---
    ("nan in step 1", lambda c: fit(c, sample_weight=weights_nan_at(3), batch_size=8),
     ValueError, r"epoch 1, step 1 is NaN or infinite.*before that step's update.*"
                 r"Received: a non-finite loss at epoch=1, step=1"),
    ("inf input", lambda c: fit(c, x=with_nan_at(c, 5, np.inf), batch_size=8),
     ValueError, r"epoch 1, step 1 is NaN or infinite"),
    ("nan sample weight", lambda c: fit(c, sample_weight=np.full(71, NAN)),
     ValueError, r"epoch 1, step 1 is NaN or infinite"),
    ("nan teacher", nan_teacher,
     ValueError, r"epoch 1, step 1 is NaN or infinite"),
    # --- model files (loaded with Keras' safe_mode on) ---
    ("missing file", lambda c: _files.load_model(c.tmp / "missing.keras", argument="--teacher"),
     ValueError, r"\(no such file\).*|Received: --teacher='.*missing\.keras'"),
    ("not a .keras file", lambda c: _files.load_model(corrupt_file(c, "model.h5"), argument="--teacher"),
     ValueError, r"Received: --teacher='.*model\.h5'"),
    ("corrupt file", lambda c: _files.load_model(corrupt_file(c), argument="--teacher"),
     ValueError, r"corrupt or not a Keras model.*Received: --teacher='.*corrupt\.keras'"),
    ("zip without a model", lambda c: _files.load_model(zip_without_model(c), argument="--teacher"),
     ValueError, r"corrupt or not a Keras model.*Received: --teacher='.*notes\.keras'"),
    ("folder named .keras", lambda c: _files.load_model(folder(c, "dir.keras"), argument="--teacher"),
     ValueError, r"corrupt or not a Keras model.*Received: --teacher='.*dir\.keras'"),
    ("unsafe lambda", lambda c: _files.load_model(lambda_model_file(c), argument="--teacher"),
     ValueError, r"Refused to load.*safe_mode on.*Received: --teacher='.*lambda\.keras'"),
    ("export format", lambda c: keras_kd.export_student(c.student, c.tmp / "x", format="onnx"),
     ValueError, r"Expected `format` to be one of \('savedmodel', 'tflite'\)\. Received: format='onnx'"),
]


@pytest.mark.parametrize("action, error, pattern", [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_input_is_named(ctx, action, error, pattern):
    before = snapshot(ctx.student)
    with pytest.raises(error) as info:
        action(ctx)
    message = str(info.value)
    if "Received" in pattern:  # keras_kd's messages are one line.
        assert "\n" not in message, message
    assert re.search(pattern, message, flags=re.S), message
    assert_unchanged(before, ctx.student)


def test_non_finite_loss_stops_at_its_step_keeping_earlier_updates(ctx):
    x, y = ctx.data
    weights = weights_nan_at(20)  # NaN in batch 3 of 8 samples
    with pytest.raises(ValueError, match=r"epoch 1, step 3 is NaN"):
        fit(ctx, sample_weight=weights, batch_size=8)
    # The student holds the weights of two clean steps, not the third's NaN.
    clean = tiny_model(seed=2)
    reference = Distiller(clean, ctx.teacher)
    reference.compile(metrics=["accuracy"])
    reference.fit(x[:16], y[:16], batch_size=8, verbose=0, shuffle=False)
    for want, got in zip(clean.get_weights(), ctx.student.get_weights()):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- #
# The command line: one line on stderr, exit status 2, before any data work
# ---------------------------------------------------------------------- #
def _model_file(ctx, filename, **kwargs):
    path = ctx.tmp / filename
    tiny_model(**kwargs).save(path)
    return str(path)


CLI_ROWS = [
    ("missing teacher", lambda c: ["distill", "--teacher", "missing.keras"],
     r"Received: --teacher='missing.keras'"),
    ("corrupt teacher", lambda c: ["distill", "--teacher", str(corrupt_file(c))],
     r"corrupt or not a Keras model.*Received: --teacher='.*corrupt\.keras'"),
    ("teacher not .keras", lambda c: ["distill", "--teacher", str(corrupt_file(c, "t.txt"))],
     r"Received: --teacher='.*t\.txt'"),
    ("unsafe teacher", lambda c: ["distill", "--teacher", str(lambda_model_file(c))],
     r"Refused to load.*Received: --teacher='.*lambda\.keras'"),
    ("corrupt student", lambda c: ["distill", "--teacher", _model_file(c, "t.keras"),
                                   "--student", str(corrupt_file(c))],
     r"Received: --student='.*corrupt\.keras'"),
    ("student ends in softmax", lambda c: [
        "distill", "--teacher", _model_file(c, "t.keras", hidden=64),
        "--student", _model_file(c, "s.keras", softmax=True, name="soft")],
     r"must output logits.*Received: student='soft'"),
    ("ensemble classes differ", lambda c: [
        "distill", "--teacher", _model_file(c, "a.keras", hidden=64, name="a"),
        "--teacher", _model_file(c, "b.keras", hidden=64, classes=4, name="b")],
     r"teacher 1 'b' output shape=\(4,\)"),
    ("temperature nan", lambda c: ["distill", "--teacher", _model_file(c, "t.keras", hidden=64),
                                   "--temperature", "nan"],
     r"Received: temperature=nan"),
    ("alpha > 1", lambda c: ["distill", "--teacher", _model_file(c, "t.keras", hidden=64),
                             "--alpha", "1.5"],
     r"Received: alpha=1.5"),
    ("demo temperature", lambda c: ["demo", "--temperature", "0"],
     r"Received: temperature=0"),
    ("unknown dataset", lambda c: ["train-teacher", "--dataset", "no_such_dataset",
                                   "--output", str(c.tmp / "t.keras")],
     r"dataset embedded in keras_kd \('mnist1d',\).*Received: name='no_such_dataset'"),
    ("teacher output not .keras", lambda c: ["train-teacher", "--output", "teacher.h5"],
     r"Received: --output='teacher.h5'"),
    ("output is a file", lambda c: ["distill", "--teacher", _model_file(c, "t.keras"),
                                    "--output", str(corrupt_file(c, "out.txt"))],
     r"it is a file. Received: --output='.*out\.txt'"),
    ("export missing file", lambda c: ["export", str(c.tmp / "missing.keras")],
     r"Received: model_or_path='.*missing\.keras'"),
]


@pytest.mark.parametrize("argv, pattern", [row[1:] for row in CLI_ROWS],
                         ids=[row[0] for row in CLI_ROWS])
def test_bad_cli_input_is_one_line(ctx, argv, pattern, capsys, monkeypatch):
    monkeypatch.chdir(ctx.tmp)
    argv = argv(ctx)
    if argv[0] != "export":
        argv += ["--data-dir", str(ctx.tmp / "tfds")]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), err
    assert not (ctx.tmp / "tfds").exists() or argv[1] == "--dataset"


@pytest.mark.parametrize("argv, pattern", [
    (["demo", "--batch-size", "0"], r"--batch-size: expected a positive integer, received '0'"),
    (["demo", "--batch-size", "abc"], r"--batch-size: expected a positive integer, received 'abc'"),
    (["distill", "--teacher", "t.keras", "--epochs", "-1"], r"--epochs: expected a positive integer"),
    (["demo", "--ensemble", "1"], r"--ensemble: expected at least 2 teachers"),
    (["export", "s.keras", "--format", "onnx"], r"--format: invalid choice: 'onnx'"),
], ids=["batch size 0", "batch size abc", "epochs -1", "ensemble of 1", "export format"])
def test_bad_cli_flags_are_usage_errors(argv, pattern, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert re.search(pattern, capsys.readouterr().err.strip().splitlines()[-1])


def test_cli_refuses_models_that_do_not_fit_the_dataset(ctx, mnist1d_data_dir, capsys):
    """Checked once the dataset is known, before training."""
    for model, pattern in (
        (dict(inputs=8, classes=10, hidden=64), r"take the inputs of dataset 'mnist1d', "
                                                r"of shape \(40,\)\. Received: --teacher"),
        (dict(inputs=40, classes=3, hidden=64), r"one logit per class of dataset 'mnist1d' "
                                                r"\(10\)\. Received: --teacher model"),
    ):
        path = _model_file(ctx, "t.keras", name="t", **model)
        with pytest.raises(SystemExit):
            cli.main(["distill", "--teacher", path, "--data-dir", str(mnist1d_data_dir),
                      "--output", str(ctx.tmp / "out")])
        err = capsys.readouterr().err
        assert re.search(pattern, err), err
        assert not (ctx.tmp / "out").exists()
