"""The tutorials (`tutorials/*.ipynb`) run top to bottom, offline.

Each notebook is executed as committed, with its parameters overridden
papermill-style (`tutorials/_execute.py`: a cell tagged
`injected-parameters` after the cell tagged `parameters`) to the embedded
MNIST-1D and tiny sizes, in the venv's interpreter, writing only to a
temporary folder. Any error in any cell fails the test.

The static tests check what keeps the notebooks usable from the
repository page: the Colab badge, the Colab install cell, the parameters
cell with Colab defaults, committed outputs of a top-to-bottom run, and
that only keras_kd's public API is used.
"""

import ast
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import keras_kd

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"


def _load_executor():
    spec = importlib.util.spec_from_file_location(
        "tutorials_execute", TUTORIALS / "_execute.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = _load_executor()
NAMES = list(execute.NOTEBOOKS)
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_URL = (
    "https://colab.research.google.com/github/keras-kd/keras_kd/blob/main/"
    "tutorials/{name}"
)
# Committed notebooks stay light enough for the repository page.
MAX_NOTEBOOK_BYTES = 300 * 1024
# A generous ceiling, far above the usual run (a hung cell, a lost tiny
# override); the measured time is printed for every notebook.
MAX_TEST_RUN_SECONDS = 240


def _read(name):
    return nbformat.read(TUTORIALS / name, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _python_source(source):
    """Cell source with IPython magics and shell escapes commented out."""
    return "\n".join(
        "# " + line if line.lstrip().startswith(("%", "!")) else line
        for line in source.splitlines()
    )


def test_every_notebook_is_listed():
    found = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert found == sorted(NAMES)
    assert set(execute.TEST_PARAMETERS) == set(NAMES)
    assert set(execute.SHOWCASE_PARAMETERS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_opens_with_colab_badge_and_outputs_note(name):
    nb = _read(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    link = COLAB_URL.format(name=name)
    assert f"[![Open In Colab]({BADGE_IMAGE})]({link})" in first.source
    # Says how long the defaults take, and why the outputs are MNIST-1D's.
    assert "Run time" in first.source and "estimate" in first.source
    note = re.search(
        re.escape(execute.NOTE_START) + "(.*?)" + re.escape(execute.NOTE_END),
        first.source,
        flags=re.DOTALL,
    )
    assert note, "the first markdown cell lacks the outputs note"
    assert "MNIST-1D" in note.group(1)


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_installs_in_colab_only(name, monkeypatch):
    cell = _code_cells(_read(name))[0]
    assert '"google.colab" in sys.modules' in cell.source
    assert "git+https://github.com/keras-kd/keras_kd" in cell.source

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(cell.source, name, "exec"), {})
    assert calls == [], "the install cell ran pip outside Colab"

    monkeypatch.setitem(sys.modules, "google.colab", object())
    exec(compile(cell.source, name, "exec"), {})
    assert len(calls) == 1 and "pip" in calls[0][0]


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_holds_colab_defaults(name):
    nb = _read(name)
    index = execute.parameters_cell_index(nb)
    cell = nb.cells[index]
    assert cell.cell_type == "code"
    assert index < min(
        i for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and "import keras_kd" in c.source
    ), "the parameters cell must come before the code that uses them"
    values = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), ast.dump(node)
        (target,) = node.targets
        values[target.id] = ast.literal_eval(node.value)  # papermill-friendly
    assert values["dataset"] == "mnist"
    assert values["data_dir"] is None
    for overrides in (execute.TEST_PARAMETERS[name],
                      execute.SHOWCASE_PARAMETERS[name]):
        assert set(overrides) <= set(values), set(overrides) - set(values)
    assert not any(
        "injected-parameters" in c.metadata.get("tags", []) for c in nb.cells
    ), "an injected-parameters cell was committed"


def _public_names():
    return set(keras_kd.__all__) | {"__version__"}


def _attribute_chain(node):
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
        return names[::-1]
    return None


@pytest.mark.parametrize("name", NAMES)
def test_uses_only_the_public_api(name):
    public = _public_names()
    problems = []
    for cell in _code_cells(_read(name)):
        tree = ast.parse(_python_source(cell.source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "keras_kd" and (
                        len(parts) > 2 or (len(parts) == 2 and parts[1] not in public)
                    ):
                        problems.append(f"import {alias.name}")
                    if alias.name.startswith("keras.src"):
                        problems.append(f"import {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module == "keras_kd":
                    problems += [
                        f"from keras_kd import {a.name}"
                        for a in node.names if a.name not in public
                    ]
                elif module.startswith("keras_kd.") or module.startswith("keras.src"):
                    problems.append(f"from {module} import ...")
            elif isinstance(node, ast.Attribute):
                chain = _attribute_chain(node)
                if not chain or chain[0] != "keras_kd" or len(chain) < 2:
                    continue
                if chain[1] not in public:
                    problems.append(".".join(chain[:2]))
                    continue
                target = getattr(keras_kd, chain[1])
                if len(chain) > 2 and isinstance(target, type(keras_kd)):
                    if chain[2].startswith("_") or not hasattr(target, chain[2]):
                        problems.append(".".join(chain[:3]))
    assert not sorted(set(problems)), (
        f"{name} uses names outside keras_kd's public API: {sorted(set(problems))}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_committed_with_the_outputs_of_a_full_run(name):
    path = TUTORIALS / name
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    cells = _code_cells(_read(name))
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        "commit the notebook as run top to bottom: "
        "`.venv/bin/python tutorials/_execute.py " + name + "`"
    )
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors


def _cpu_seconds_cell():
    """A last cell that prints the kernel's CPU time, for the report."""
    return nbformat.v4.new_code_cell(
        "import resource as _r\n"
        "_u = _r.getrusage(_r.RUSAGE_SELF)\n"
        "print('KERNEL_CPU_SECONDS', _u.ru_utime + _u.ru_stime)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_runs_top_to_bottom_offline(name, mnist1d_data_dir, tmp_path, capsys):
    nb = _read(name)
    parameters = dict(execute.TEST_PARAMETERS[name], data_dir=str(mnist1d_data_dir))
    # Every output folder goes to tmp_path (and the kernel runs there).
    for parameter in execute.parameter_names(nb):
        if parameter.endswith("_dir") and parameter != "data_dir":
            parameters[parameter] = str(tmp_path / parameter)
    run = execute.inject_parameters(nb, parameters)
    run.cells.append(_cpu_seconds_cell())
    start = time.perf_counter()
    execute.execute(run, cwd=tmp_path, timeout=MAX_TEST_RUN_SECONDS)
    seconds = time.perf_counter() - start

    cpu = re.search(
        r"KERNEL_CPU_SECONDS (\S+)",
        "".join(o.get("text", "") for o in run.cells[-1].outputs),
    )
    with capsys.disabled():
        print(f"\n  {name}: {seconds:.0f} s wall, "
              f"{float(cpu.group(1)):.0f} s CPU in the kernel", end="")
    assert seconds < MAX_TEST_RUN_SECONDS
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, "the notebook saved nothing to its output folder"
    assert not any(
        p.name.endswith(".ipynb") for p in written
    ), "the notebook wrote a notebook"
