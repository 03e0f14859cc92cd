"""Nothing lost when a run dies; mixed precision; several devices.

Scripts that need a fresh process (a run that kills itself, TensorFlow
configured with two logical CPUs) run in a subprocess.
"""

import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import numpy_soft_loss, tiny_data, tiny_model

from keras_kd import Distiller
from keras_kd import cli
from keras_kd import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subprocess(script, *args, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


class Interrupt(Exception):
    pass


class InterruptAfter(keras.callbacks.Callback):
    """Raises `Interrupt` at the end of epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt()


# ---------------------------------------------------------------------- #
# BackupAndRestore and a run killed mid-fit
# ---------------------------------------------------------------------- #
# Fits a Distiller for 4 epochs with BackupAndRestore; with a kill epoch,
# the process kills itself (os._exit, no clean-up) after that epoch's backup.
KILLABLE_RUN = textwrap.dedent(
    """
    import os
    import sys

    import keras
    import numpy as np

    import keras_kd


    def train(backup_dir, kill_after=None):
        keras.utils.set_random_seed(7)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(96, 8)).astype("float32")
        y = rng.integers(0, 3, size=96)
        teacher = keras.Sequential([
            keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(), keras.layers.Dropout(0.5),
            keras.layers.Dense(3)])
        student = keras.Sequential([
            keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(), keras.layers.Dense(3)])
        distiller = keras_kd.Distiller(student, teacher, alpha=0.3)
        schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=24)
        distiller.compile(optimizer=keras.optimizers.Adam(schedule))

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == kill_after:
                    os._exit(17)

        callbacks = [keras.callbacks.BackupAndRestore(backup_dir), Kill()]
        history = distiller.fit(x, y, batch_size=16, epochs=4, shuffle=False,
                                callbacks=callbacks, verbose=0)
        return student.get_weights(), history.history


    if __name__ == "__main__":
        train(sys.argv[1], kill_after=int(sys.argv[2]))
    """
)


def test_killed_run_restarts_to_the_weights_of_an_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLABLE_RUN)
    backup = tmp_path / "backup"
    killed = _subprocess(script, backup, 1)  # dies after epoch 2 of 4
    assert killed.returncode == 17, killed.stderr[-2000:]
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2

    train = runpy.run_path(str(script))["train"]
    resumed, history = train(str(backup))  # a restart: same script, same seed
    assert len(history["loss"]) == 2 and not backup.exists()
    uninterrupted, _ = train(str(tmp_path / "other"))
    # Same optimizer state, schedule and BN statistics: equal to float32
    # rounding (the teacher's dropout is off at inference).
    for want, got in zip(uninterrupted, resumed):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def _resumable_backup_roundtrip(tmp_path):
    x, y = tiny_data()
    distiller = Distiller(tiny_model(seed=2), tiny_model(hidden=32, seed=1))
    distiller.compile()
    with pytest.raises(Interrupt):
        distiller.fit(x, y, epochs=2, verbose=0, callbacks=[
            *training.backup(tmp_path, "run", description="the test run"),
            InterruptAfter(0)])
    return distiller, x, y


def test_resumable_backup_says_so_and_cleans_up(tmp_path, capsys):
    distiller, x, y = _resumable_backup_roundtrip(tmp_path)
    assert (tmp_path / ".backup" / "run").is_dir()
    distiller.fit(x, y, epochs=2, verbose=0,
                  callbacks=training.backup(tmp_path, "run", description="the test run"))
    assert "resuming the test run after epoch 1 of 2" in capsys.readouterr().err
    assert not (tmp_path / ".backup").exists()

    # resume=False deletes the backup first; a backup of another model fails clearly.
    _resumable_backup_roundtrip(tmp_path)
    training.backup(tmp_path, "run", resume=False)
    assert "starting run over" in capsys.readouterr().err
    assert not (tmp_path / ".backup" / "run").exists()
    _resumable_backup_roundtrip(tmp_path)
    other = Distiller(tiny_model(hidden=5, seed=2), tiny_model(hidden=32, seed=1))
    other.compile()
    with pytest.raises(ValueError, match=r"Could not resume .*--no-resume.*Received: backup_dir="):
        other.fit(x, y, verbose=0, callbacks=training.backup(tmp_path, "run"))


def _small_teacher(path):
    teacher = tiny_model(inputs=40, classes=10, hidden=512, seed=1, name="teacher")
    teacher.save(path)
    return path


def test_cli_distill_resumes_an_unfinished_run(mnist1d_data_dir, tmp_path, capsys,
                                               monkeypatch):
    teacher = _small_teacher(tmp_path / "teacher.keras")
    out = tmp_path / "out"
    argv = ["distill", "--teacher", str(teacher), "--output", str(out), "--epochs", "2",
            "--distill-batch-size", "4096", "--data-dir", str(mnist1d_data_dir),
            "--verbose", "0"]
    real_distill = training.distill

    def killed_after_one_epoch(*args, callbacks=None, **kwargs):
        return real_distill(*args, callbacks=[*callbacks, InterruptAfter(0)], **kwargs)

    monkeypatch.setattr(training, "distill", killed_after_one_epoch)
    with pytest.raises(Interrupt):
        cli.main(argv)
    backup = out / ".backup" / "distill"
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    shutil.copytree(backup, tmp_path / "saved_backup")
    monkeypatch.setattr(training, "distill", real_distill)
    capsys.readouterr()

    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "resuming the distillation after epoch 1 of 2" in err
    assert (out / "student.keras").exists() and not (out / ".backup").exists()

    # --no-resume deletes the backup, saying so, before training starts over.
    shutil.copytree(tmp_path / "saved_backup", backup)

    def not_run(*args, **kwargs):
        raise Interrupt()

    monkeypatch.setattr(training, "distill", not_run)
    with pytest.raises(Interrupt):
        cli.main(argv + ["--no-resume"])
    assert "starting the distillation over" in capsys.readouterr().err
    assert not backup.exists()


def test_demo_backs_every_training_run_up(mnist1d_data_dir, tmp_path, monkeypatch):
    from keras_kd import demo

    seen = {}

    def fake_train_teacher(*args, callbacks=None, **kwargs):
        seen["teacher"] = callbacks
        raise Interrupt()

    monkeypatch.setattr(training, "train_teacher", fake_train_teacher)
    with pytest.raises(Interrupt):
        demo.run_demo(str(tmp_path / "demo"), data_dir=mnist1d_data_dir,
                      train_size=64, transfer_size=256, verbose=0)
    (backup,) = seen["teacher"]
    assert isinstance(backup, training.ResumableBackup)
    assert backup.backup_dir == str(tmp_path / "demo" / ".backup" / "teacher")
    with pytest.raises(Interrupt):
        demo.run_demo(str(tmp_path / "demo"), data_dir=mnist1d_data_dir,
                      train_size=64, transfer_size=256, verbose=0, resume=False)


def test_model_checkpoint_keras_and_weights_formats(tmp_path):
    x, y = tiny_data()
    distiller = Distiller(tiny_model(seed=2), tiny_model(hidden=32, seed=1), alpha=0.3)
    distiller.compile()
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras")),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.weights.h5"),
                                        save_weights_only=True),
    ]
    distiller.fit(x, y, epochs=2, verbose=0, callbacks=callbacks)
    whole = keras.saving.load_model(tmp_path / "ckpt.keras")
    assert isinstance(whole, Distiller) and whole.alpha == 0.3
    weights = Distiller(tiny_model(seed=5), tiny_model(hidden=32, seed=6), alpha=0.3)
    weights.load_weights(tmp_path / "ckpt.weights.h5")
    for restored in (whole, weights):
        for want, got in zip(distiller.student.get_weights(),
                             restored.student.get_weights()):
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- #
# Mixed precision
# ---------------------------------------------------------------------- #
@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


# Logits near 3e4, exactly representable in float16 (multiples of 16).
# At T = 0.25 they become ~1.2e5, beyond float16's largest value (65504).
TEACHER_W = np.array([[30000.0, 29984.0, 0.0], [0.0, 16.0, 32.0]])
STUDENT_W = np.array([[29952.0, 30016.0, 16.0], [8.0, 0.0, 4.0]])
ONE_HOT = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], "float32")


def fixed_logits_model(weights):
    """A model whose logits are `x @ weights` (a Dense layer, no bias)."""
    weights = np.asarray(weights, "float32")
    model = keras.Sequential([
        keras.Input((weights.shape[0],)),
        keras.layers.Dense(weights.shape[1], use_bias=False)])
    model.layers[-1].set_weights([weights])
    return model


def _large_logits_loss():
    teacher, student = fixed_logits_model(TEACHER_W), fixed_logits_model(STUDENT_W)
    distiller = Distiller(student, teacher, temperature=0.25, alpha=0.0)
    distiller.compile()
    logs = distiller.evaluate(ONE_HOT, np.zeros(4), return_dict=True, verbose=0)
    return distiller, logs["distillation_loss"]


def test_soft_targets_run_in_float32_under_mixed_precision(mixed_float16):
    distiller, mixed = _large_logits_loss()
    assert distiller.teacher.compute_dtype == "float16"
    assert distiller.student(ONE_HOT).dtype == "float16"
    keras.config.set_dtype_policy("float32")
    _, full = _large_logits_loss()
    want = numpy_soft_loss(ONE_HOT @ TEACHER_W, ONE_HOT @ STUDENT_W, 0.25).mean()
    assert np.isfinite(mixed) and mixed > 1.0  # 8.5: float16 would overflow
    np.testing.assert_allclose(mixed, full, rtol=1e-3)
    np.testing.assert_allclose(mixed, want, rtol=1e-3)


def test_mixed_precision_training_scales_the_loss(mixed_float16):
    x, y = tiny_data()
    student = tiny_model(seed=2)
    distiller = Distiller(student, tiny_model(hidden=32, seed=1))
    distiller.compile(optimizer="adam")
    assert distiller.dtype_policy.name == "mixed_float16"
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.copy() for w in student.get_weights()]
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert all(w.dtype == "float32" for w in student.get_weights())
    assert all(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


# ---------------------------------------------------------------------- #
# Several devices, several machines
# ---------------------------------------------------------------------- #
STRATEGIES = textwrap.dedent(
    """
    import json
    import os
    import socket
    import sys

    # One worker of a MultiWorkerMirroredStrategy cluster: TF_CONFIG must
    # be set, and the CPU split into 2 logical devices, before TF starts.
    sock = socket.socket()
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
    sock.close()
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}"]},
        "task": {"type": "worker", "index": 0}})

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    import keras
    import numpy as np

    import keras_kd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64)


    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            teacher = keras.Sequential([
                keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(3)])
            student = keras.Sequential([
                keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(3)])
            distiller = keras_kd.Distiller(student, teacher, alpha=0.3)
            distiller.compile(optimizer=keras.optimizers.SGD(0.1),
                              metrics=["accuracy"])
        # Global batch 16: 8 per replica under the mirrored strategy.
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        history = distiller.fit(data, epochs=2, verbose=0).history
        logs = distiller.evaluate(data, return_dict=True, verbose=0)
        return {"replicas": strategy.num_replicas_in_sync,
                "history": history, "evaluate": logs,
                "weights": [w.tolist() for w in student.get_weights()]}


    results = {"single": run(tf.distribute.get_strategy()),
               "multi_worker": run(multi_worker), "mirrored": run(mirrored)}
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
    """
)


def test_mirrored_and_multi_worker_strategies_match_one_device(tmp_path):
    script = tmp_path / "strategies.py"
    script.write_text(STRATEGIES)
    result = _subprocess(script, tmp_path / "results.json")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mirrored"]["replicas"] == 2
    assert results["multi_worker"]["replicas"] == 1
    single = results["single"]
    for name in ("mirrored", "multi_worker"):
        other = results[name]
        for key in ("loss", "distillation_loss", "student_loss", "accuracy"):
            # Not doubled or halved by the number of replicas.
            np.testing.assert_allclose(other["history"][key], single["history"][key],
                                       rtol=1e-5, err_msg=f"{name} {key}")
            np.testing.assert_allclose(other["evaluate"][key], single["evaluate"][key],
                                       rtol=1e-5, err_msg=f"{name} {key}")
        for want, got in zip(single["weights"], other["weights"]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
