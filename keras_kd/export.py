"""Export a trained student for deployment: TF SavedModel or TFLite.

`keras_kd.export_student` takes a `Distiller` (it exports the student), a
student model, or a `.keras` file, and writes a TensorFlow SavedModel
folder (for TF Serving, TF.js, TFLite conversion...) or a `.tflite` file
(for mobile and edge devices, converted with `tf.lite.TFLiteConverter`).
"""

import dataclasses
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_kd import _files

FORMATS = ("savedmodel", "tflite")


@dataclasses.dataclass(frozen=True)
class ExportedStudent:
    """What `keras_kd.export_student` wrote.

    Attributes:
        path: Path of the SavedModel folder or of the `.tflite` file.
        format: `"savedmodel"` or `"tflite"`.
        size_bytes: Size on disk in bytes (of every file in the folder,
            for a SavedModel).
    """

    path: str
    format: str
    size_bytes: int


def export_student(model_or_path, path, format="savedmodel"):
    """Exports a student model for deployment, without Keras.

    - `format="savedmodel"`: a TensorFlow SavedModel folder, written by
      `model.export(path, format="tf_saved_model")`. Its `serve` endpoint
      (also the `serving_default` signature) maps a batch of inputs to the
      student's outputs: `tf.saved_model.load(path).serve(x)`.
    - `format="tflite"`: a float32 TFLite flat buffer, converted from that
      SavedModel by `tf.lite.TFLiteConverter` (no quantisation, so its
      outputs match the Keras model's to float32 rounding). Its batch axis
      is dynamic: resize the input tensor to the batch you feed.

    The student outputs what it was trained to output: logits. Apply a
    softmax in the serving code if probabilities are needed.

    An earlier export at `path` is replaced (with a notice on stderr). A
    path holding anything else, e.g. a folder that is not a SavedModel, is
    refused rather than deleted.

    Args:
        model_or_path: A `keras_kd.Distiller` (its student is exported), a
            `keras.Model`, or the path of a `.keras` file holding either
            (loaded with Keras' `safe_mode` on).
        path: Destination: a folder for `"savedmodel"`, a file (by
            convention ending in `.tflite`) for `"tflite"`. Parent folders
            are created.
        format: `"savedmodel"` (the default) or `"tflite"`.

    Returns:
        An `ExportedStudent` with the `path`, the `format` and the size on
        disk in bytes, `size_bytes`.

    Raises:
        ValueError: if `format` is not one of `FORMATS`, if
            `model_or_path` is not a model or a loadable `.keras` file, or if
            `path` holds something that is not an earlier export.

    Example:

    >>> student = keras_kd.models.mlp_student((40,), 10)
    >>> exported = keras_kd.export_student(student, "student.tflite",
    ...                                    format="tflite")
    >>> exported.size_bytes  # about 62 KB for this 15,210-parameter MLP
    """
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(
            f"Expected `format` to be one of {FORMATS}. "
            f"Received: format={format!r}"
        )
    model = _student_of(model_or_path)
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(
            "Expected `path` to be the path of the export to write. "
            f"Received: path={path!r}"
        )
    path = os.fspath(path)
    _make_room(path, format)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if format == "savedmodel":
        _save_model(model, path)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.path.join(tmp, "savedmodel")
            _save_model(model, saved)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            flatbuffer = converter.convert()
        with open(path, "wb") as f:
            f.write(flatbuffer)
    return ExportedStudent(path=path, format=format, size_bytes=size_bytes(path))


def size_bytes(path):
    """Size on disk in bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _student_of(model_or_path):
    """The model to export: a Distiller's student, a model, or a loaded file."""
    from keras_kd.distiller import Distiller

    model = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        model = _files.load_model(model_or_path, argument="model_or_path")
    if isinstance(model, Distiller):
        return model.student
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Expected `model_or_path` to be a `keras_kd.Distiller`, a "
            "`keras.Model` or the path of a `.keras` file. Received: "
            f"model_or_path={model_or_path!r}"
        )
    return model


def _is_earlier_export(path, format):
    if format == "tflite":
        return os.path.isfile(path)
    return os.path.isdir(path) and (
        not os.listdir(path)
        or os.path.isfile(os.path.join(path, "saved_model.pb"))
    )


def _make_room(path, format):
    """Removes an earlier export at `path` (saying so), or refuses."""
    if not os.path.lexists(path):
        return
    if not _is_earlier_export(path, format):
        what = "a folder" if os.path.isdir(path) else "a file"
        expected = (
            "a new folder, or an earlier SavedModel export (a folder with "
            "`saved_model.pb`)"
            if format == "savedmodel"
            else "a new file, or an earlier `.tflite` export (a file)"
        )
        raise ValueError(
            f"Expected `path` to be {expected}, which is replaced; it is "
            f"{what} that is not, so it is left alone. Received: "
            f"path={path!r}"
        )
    _files.say(f"replacing {path}")
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _save_model(model, path):
    model.export(path, format="tf_saved_model", verbose=False)
