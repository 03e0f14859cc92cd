"""Model files: loading with clear errors, saving that says what it replaces."""

import os
import sys

import keras


def say(message):
    """Prints a one-line notice to stderr (keeps stdout for results)."""
    print(f"keras-kd: {message}", file=sys.stderr, flush=True)


def load_model(path, *, argument="path"):
    """Loads a `.keras` model with Keras' `safe_mode` on.

    Args:
        path: Path of a `.keras` file.
        argument: Name of the argument the path came from, for messages.

    Returns:
        The loaded `keras.Model`.

    Raises:
        ValueError: naming the path, if it is missing, not a `.keras` file,
            corrupt, or not a Keras model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(
            f"Expected `{argument}` to be an existing `.keras` file. "
            f"Received: {argument}={path!r} (no such file)"
        )
    if not path.endswith(".keras"):
        raise ValueError(
            f"Expected `{argument}` to be a Keras `.keras` file. "
            f"Received: {argument}={path!r}"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for bad files.
        reason = str(error).strip().splitlines()[0] if str(error) else ""
        if "safe_mode" in str(error) or "arbitrary code" in str(error):
            raise ValueError(
                f"Refused to load `{argument}`: it holds Python code (e.g. "
                "a `Lambda` layer's lambda), which could run anything, and "
                "models are loaded with Keras' safe_mode on. If you trust "
                "the file, load it with `keras.saving.load_model(path, "
                "safe_mode=False)` and pass the model instead. Received: "
                f"{argument}={path!r}"
            ) from None
        raise ValueError(
            f"Could not load a Keras model from `{argument}`: the file is "
            f"corrupt or not a Keras model ({type(error).__name__}: "
            f"{reason[:200]}). Received: {argument}={path!r}"
        ) from None
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected `{argument}` to hold a `keras.Model`. Received: "
            f"{argument}={path!r}, which holds a {type(model).__name__}"
        )
    return model


def save_model(model, path):
    """Saves `model` to `path`, saying so when it replaces an earlier file.

    Args:
        model: A `keras.Model`.
        path: Destination `.keras` path; parent folders are created.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        say(f"replacing {path}")
    model.save(path)
    return path


def write_text(path, text):
    """Writes `text` to `path`, saying so when it replaces an earlier file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        say(f"replacing {path}")
    with open(path, "w") as f:
        f.write(text)
    return path
