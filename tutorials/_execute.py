"""Executes the tutorials with their parameters overridden (papermill-style).

The test suite (`tests/test_tutorials.py`) runs every notebook top to
bottom with `TEST_PARAMETERS` (the embedded MNIST-1D, tiny sizes). The
committed notebooks carry the outputs of a run with `SHOWCASE_PARAMETERS`
(MNIST-1D at moderate sizes, since MNIST cannot be downloaded offline);
refresh them with

    .venv/bin/python tutorials/_execute.py                 # every notebook
    .venv/bin/python tutorials/_execute.py 01_quickstart   # one of them

Parameters are overridden as papermill does: a code cell tagged
`injected-parameters` is inserted right after the cell tagged `parameters`.
The kernel is this interpreter (a kernel spec written to a temporary
folder), so a fresh clone's `.venv` runs the notebooks without any Jupyter
set-up. Only `nbformat`, `nbclient` and `ipykernel` are needed.
"""

import argparse
import contextlib
import copy
import json
import os
import re
import sys
import tempfile
import time

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_ensemble_teachers.ipynb",
    "03_reverse_distillation.ipynb",
    "04_tuning_temperature_and_alpha.ipynb",
    "05_deploy_the_student.ipynb",
)

KERNEL_NAME = "keras_kd_tutorials"
INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"
# Between these markers, the first markdown cell says which parameters
# produced the committed outputs; `main` rewrites it after each run.
NOTE_START = "<!-- outputs-note -->"
NOTE_END = "<!-- /outputs-note -->"

# Tiny runs for the test suite: offline, a few seconds of training each.
TEST_PARAMETERS = {
    "01_quickstart.ipynb": dict(
        dataset="mnist1d",
        train_split="train[:1000]",
        transfer_split="train[:1000]+transfer[:1000]",
        teacher_width=16,
        teacher_epochs=2,
        student_epochs=2,
        distill_epochs=2,
    ),
    "02_ensemble_teachers.ipynb": dict(
        dataset="mnist1d",
        train_split="train[:1000]",
        transfer_split="train[:1000]+transfer[:1000]",
        teacher_width=16,
        teacher_epochs=2,
        distill_epochs=2,
    ),
    "03_reverse_distillation.ipynb": dict(
        dataset="mnist1d",
        train_split="train[:1000]",
        student_width=16,
        teacher_epochs=2,
        epochs=2,
    ),
    "04_tuning_temperature_and_alpha.ipynb": dict(
        dataset="mnist1d",
        train_split="train[:1000]",
        validation_split="train[3500:]",
        teacher_width=16,
        teacher_epochs=2,
        max_trials=3,
        trial_epochs=2,
        final_epochs=2,
    ),
    "05_deploy_the_student.ipynb": dict(
        dataset="mnist1d",
        train_split="train[:1000]",
        transfer_split="train[:1000]+transfer[:1000]",
        teacher_width=16,
        teacher_epochs=2,
        distill_epochs=2,
        latency_repeats=5,
    ),
}

# The runs whose outputs are committed: MNIST-1D at moderate sizes.
SHOWCASE_PARAMETERS = {
    "01_quickstart.ipynb": dict(
        dataset="mnist1d",
        transfer_split="train+transfer",
        teacher_width=64,
        teacher_epochs=30,
        student_hidden=(100, 100),
        student_epochs=40,
        distill_epochs=30,
        batch_size=64,
    ),
    "02_ensemble_teachers.ipynb": dict(
        dataset="mnist1d",
        transfer_split="train+transfer",
        teacher_width=32,
        teacher_epochs=20,
        student_hidden=(100, 100),
        distill_epochs=20,
        batch_size=64,
    ),
    "03_reverse_distillation.ipynb": dict(
        dataset="mnist1d",
        train_split="train",
        teacher_hidden=(100, 100),
        student_width=32,
        teacher_epochs=40,
        epochs=30,
        batch_size=64,
    ),
    "04_tuning_temperature_and_alpha.ipynb": dict(
        dataset="mnist1d",
        train_split="train[:3500]",
        validation_split="train[3500:]",
        teacher_width=64,
        teacher_epochs=30,
        student_hidden=(100, 100),
        max_trials=12,
        trial_epochs=8,
        final_epochs=20,
        batch_size=64,
    ),
    "05_deploy_the_student.ipynb": dict(
        dataset="mnist1d",
        transfer_split="train+transfer",
        teacher_width=64,
        teacher_epochs=20,
        student_hidden=(100, 100),
        distill_epochs=20,
        batch_size=64,
    ),
}

# Why the committed outputs are not MNIST's (first markdown cell).
_NOTE = (
    "**The outputs shown below were produced on MNIST-1D**, not MNIST: they "
    "come from this repository's offline test machine, where MNIST cannot "
    "be downloaded, and MNIST-1D is generated locally by keras_kd. That run "
    "overrode the parameters cell with {overrides} and took {seconds:.0f} s "
    "on a 2-core CPU shared with other jobs. In Colab the notebook's own "
    "defaults (MNIST) apply."
)


def parameters_cell_index(nb):
    """Index of the cell tagged `parameters`; raises if there is none."""
    for index, cell in enumerate(nb.cells):
        if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return index
    raise ValueError("Expected a code cell tagged 'parameters'. Found none.")


def parameter_names(nb):
    """Names assigned at top level in the `parameters` cell."""
    source = nb.cells[parameters_cell_index(nb)].source
    return re.findall(r"^([A-Za-z_]\w*)\s*=", source, flags=re.MULTILINE)


def inject_parameters(nb, parameters):
    """A copy of `nb` with a cell assigning `parameters` after `parameters`.

    Raises:
        ValueError: if a name is not assigned in the `parameters` cell (a
            misspelt override would otherwise be silently ignored).
    """
    known = set(parameter_names(nb))
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(
            f"Parameters {unknown} are not set in the notebook's parameters "
            f"cell, which sets {sorted(known)}."
        )
    nb = copy.deepcopy(nb)
    lines = ["# Parameters"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = [INJECTED_TAG]
    nb.cells.insert(parameters_cell_index(nb) + 1, cell)
    return nb


def remove_injected(nb):
    """`nb` without its `injected-parameters` cells (in place)."""
    nb.cells = [
        c for c in nb.cells
        if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])
    ]
    return nb


@contextlib.contextmanager
def kernel_manager():
    """A `KernelManager` whose kernel is this interpreter (`sys.executable`).

    The kernel spec is written to a temporary folder, so nothing is
    installed into the user's Jupyter configuration.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory() as kernels:
        spec_dir = os.path.join(kernels, KERNEL_NAME)
        os.makedirs(spec_dir)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher",
                     "-f", "{connection_file}"],
            "display_name": "Python 3 (keras_kd)",
            "language": "python",
            # Silences TensorFlow's C++ start-up logs (no GPU found, ...).
            "env": {"TF_CPP_MIN_LOG_LEVEL": "3"},
        }
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump(spec, f)
        specs = KernelSpecManager(kernel_dirs=[kernels])
        yield KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def execute(nb, *, cwd, timeout=600):
    """Executes `nb` in place in `cwd`; returns the wall time in seconds.

    Raises:
        nbclient.exceptions.CellExecutionError: on the first failing cell,
            with its traceback.
    """
    from nbclient import NotebookClient

    start = time.perf_counter()
    with kernel_manager() as km:
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()
    return time.perf_counter() - start


def _set_note(nb, overrides, seconds):
    first = next(c for c in nb.cells if c.cell_type == "markdown")
    text = ", ".join(f"`{k}={v!r}`" for k, v in overrides.items())
    note = NOTE_START + "\n" + _NOTE.format(overrides=text, seconds=seconds) \
        + "\n" + NOTE_END
    pattern = re.escape(NOTE_START) + ".*?" + re.escape(NOTE_END)
    if not re.search(pattern, first.source, flags=re.DOTALL):
        raise ValueError(
            f"Expected the first markdown cell to hold {NOTE_START} ... "
            f"{NOTE_END}."
        )
    first.source = re.sub(pattern, lambda _: note, first.source,
                          flags=re.DOTALL)


# Start-up noise of TensorFlow's C++ runtime on a machine without a GPU,
# written to the kernel's stderr; dropped from the committed outputs.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)


def _drop_noise(nb):
    """Drops TensorFlow's start-up noise; shortens local paths in stderr."""
    local = (os.path.join(REPO, ""), os.path.join(sys.prefix, ""))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = output["text"].splitlines(keepends=True)
                text = "".join(l for l in lines if not _NOISE.match(l))
                for prefix in local:
                    text = text.replace(prefix, "")
                output["text"] = text
                if not output["text"].strip():
                    continue
            kept.append(output)
        cell.outputs = kept


def _renumber(nb):
    """Execution counts 1, 2, ... as a fresh top-to-bottom run shows them."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            continue
        count += 1
        cell.execution_count = count
        for output in cell.get("outputs", []):
            if "execution_count" in output:
                output["execution_count"] = count


def refresh(name, *, data_dir=None):
    """Runs notebook `name` with `SHOWCASE_PARAMETERS` and saves its outputs.

    Runs from the repository root (so `saved_models/tutorials/` receives
    the models, as for a reader), then removes the injected cell, updates
    the outputs note and writes the notebook back.
    """
    path = os.path.join(HERE, name)
    nb = nbformat.read(path, as_version=4)
    overrides = dict(SHOWCASE_PARAMETERS[name])
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    run = inject_parameters(nb, overrides)
    seconds = execute(run, cwd=REPO)
    remove_injected(run)
    _drop_noise(run)
    _renumber(run)
    overrides.pop("data_dir", None)
    _set_note(run, overrides, seconds)
    run.metadata.pop("papermill", None)
    nbformat.write(run, path)
    print(f"{name}: {seconds:.0f} s, {os.path.getsize(path) / 1024:.0f} KB")
    return seconds


def main(argv=None):
    """Command line: refreshes the named notebooks (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks (default: all)")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir")
    args = parser.parse_args(argv)
    names = [
        next(n for n in NOTEBOOKS if n.startswith(prefix.removesuffix(".ipynb")))
        for prefix in args.names
    ] or list(NOTEBOOKS)
    for name in names:
        refresh(name, data_dir=args.data_dir)


if __name__ == "__main__":
    main()
