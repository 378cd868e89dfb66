"""The notebooks as files: clean in git, runnable offline, parameterised, all listed in the index.

Static checks of every notebooks/*.ipynb (no kernel needed): no stored outputs or execution
counts (diff-friendly; `make strip` removes them), kernel ``python3``, nbformat v4, a first code
cell tagged ``parameters`` (papermill) holding plain literal assignments, ``smoke = False`` in
every figure notebook and recomputation off by default, and no code cell that needs the network.
The index notebook must link every notebook and every figure it shows must exist once figures
have been generated. One papermill run checks how the sweep progress bar renders.
"""
from __future__ import annotations

import ast
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import importlib.util

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
FIG_DIR = ROOT / "figures"
INDEX = NB_DIR / "00_index.ipynb"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
FIGURE_NOTEBOOKS = [p for p in NOTEBOOKS if p.name.startswith("fig_")]

#: metadata that an executed or hand-saved notebook carries and a committed one must not
#: (execution timings, papermill provenance, saved widget state, view state).
FORBIDDEN_NB_METADATA = {"papermill", "widgets", "varInspector", "toc"}
FORBIDDEN_CELL_METADATA = {"execution", "papermill", "ExecuteTime", "collapsed", "scrolled"}

#: modules whose import means the notebook talks to the network.
NETWORK_MODULES = {"requests", "urllib", "urllib3", "httpx", "http", "aiohttp", "socket",
                   "ftplib", "wget", "pooch", "gdown", "huggingface_hub"}
SHELL_MAGIC = re.compile(r"^\s*(!|%%(bash|sh|script|system)\b|%(pip|conda|mamba|sx|system)\b)")


def _load_stripper():
    spec = importlib.util.spec_from_file_location("strip_notebooks",
                                                  ROOT / "tools" / "strip_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


stripper = _load_stripper()


def ids(paths):
    return [p.name for p in paths]


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def python_source(cell_source: str) -> str:
    """Cell source with IPython line magics turned into ``pass`` so that ``ast`` can parse it."""
    lines = []
    for ln in cell_source.splitlines():
        lines.append(re.sub(r"^(\s*)%.*$", r"\1pass", ln) if ln.lstrip().startswith("%") else ln)
    return "\n".join(lines)


def network_uses(source: str) -> list[str]:
    """What in one code cell's source would need the network (empty list: nothing)."""
    found = [f"shell/magic line {ln.strip()!r}" for ln in source.splitlines()
             if SHELL_MAGIC.match(ln)]
    tree = ast.parse(python_source(
        "\n".join(ln for ln in source.splitlines() if not SHELL_MAGIC.match(ln))))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in NETWORK_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in NETWORK_MODULES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.match(r"^\s*(https?|ftp)://", node.value):
                found.append(f"URL {node.value!r}")
        elif isinstance(node, ast.keyword) and node.arg == "download":
            if isinstance(node.value, ast.Constant) and node.value.value is True:
                found.append("download=True")
    return found


def parameters(nb) -> dict:
    """The parameters cell as {name: literal value}; fails on anything but literal assignments."""
    cell = code_cells(nb)[0]
    tree = ast.parse(python_source(cell.source))
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring-like note
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), (
            f"parameters cell may only assign literals, found: {ast.unparse(stmt)}")
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for t in targets:
            assert isinstance(t, ast.Name), ast.unparse(stmt)
            try:
                out[t.id] = ast.literal_eval(stmt.value)
            except ValueError:
                raise AssertionError(f"parameters cell may only assign literals, found: "
                                     f"{ast.unparse(stmt)}") from None
    return out


def markdown_links(nb) -> list[str]:
    """Targets of every markdown link and image ``[..](target)`` / ``<img src=..>`` in ``nb``."""
    links = []
    for c in nb.cells:
        if c.cell_type == "markdown":
            links += re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", c.source)
            links += re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", c.source)
    return links


# -- every notebook ---------------------------------------------------------------------------

def test_there_are_notebooks():
    assert INDEX.exists(), "notebooks/00_index.ipynb is the entry point (README, Binder link)"
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_valid_nbformat_v4(path):
    nb = read(path)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    raw = json.loads(path.read_text())
    assert raw["nbformat"] == 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_outputs_stripped(path):
    nb = read(path)
    bad = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not bad, (f"{path.name}: cells {bad} have stored outputs or execution counts; "
                     "run `make strip`")
    attach = [i for i, c in enumerate(nb.cells) if c.get("attachments")]
    assert not attach, f"{path.name}: cells {attach} embed attachments (link ../figures/ instead)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_metadata_consistent(path):
    nb = read(path)
    ks = nb.metadata.get("kernelspec", {})
    assert ks.get("name") == "python3", f"{path.name}: kernelspec {ks!r}; want name 'python3'"
    assert ks.get("language", "python") == "python"
    lang = nb.metadata.get("language_info", {}).get("name", "python")
    assert lang == "python"
    bad = FORBIDDEN_NB_METADATA & set(nb.metadata)
    assert not bad, f"{path.name}: notebook metadata {sorted(bad)}; run `make strip`"
    for i, c in enumerate(nb.cells):
        bad = FORBIDDEN_CELL_METADATA & set(c.metadata)
        assert not bad, f"{path.name}: cell {i} metadata {sorted(bad)}; run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_committed_form_is_the_stripped_form(path):
    """Byte for byte what `make strip` writes, so that diffs show only real edits."""
    assert path.read_text(encoding="utf-8") == stripper.stripped_text(path), (
        f"{path.name} is not in stripped form; run `make strip`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_first_code_cell_is_tagged_parameters(path):
    nb = read(path)
    cells = code_cells(nb)
    assert cells, f"{path.name} has no code cell (papermill needs a parameters cell)"
    assert "parameters" in cells[0].metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters'")
    for c in cells[1:]:
        assert "parameters" not in c.metadata.get("tags", []), f"{path.name}: two parameter cells"
    parameters(nb)  # literal assignments only


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_no_cell_needs_the_network(path):
    nb = read(path)
    problems = {i: network_uses(c.source) for i, c in enumerate(nb.cells)
                if c.cell_type == "code"}
    problems = {i: p for i, p in problems.items() if p}
    assert not problems, f"{path.name}: cells needing the network: {problems}"


@pytest.mark.parametrize("path", FIGURE_NOTEBOOKS, ids=ids(FIGURE_NOTEBOOKS))
def test_figure_notebook_defaults_read_the_cache(path):
    """Default parameters: full settings (smoke off) and recomputation opt-in (off)."""
    params = parameters(read(path))
    assert params.get("smoke") is False, f"{path.name}: parameters must set smoke = False"
    on = {k: v for k, v in params.items() if "recompute" in k.lower() and v not in (False, None)}
    assert not on, f"{path.name}: recomputation must be opt-in, found {on}"


# -- the index --------------------------------------------------------------------------------

def test_index_links_every_notebook():
    links = markdown_links(read(INDEX))
    linked = {Path(u.split("#")[0]).name for u in links if u.split("#")[0].endswith(".ipynb")}
    for u in links:
        target = u.split("#")[0]
        if target.endswith(".ipynb"):
            assert "://" not in target and (NB_DIR / target).exists(), f"broken link {u!r}"
    unlisted = sorted(p.name for p in NOTEBOOKS if p != INDEX and p.name not in linked)
    assert not unlisted, (f"notebooks missing from 00_index.ipynb: {unlisted} (add one table "
                          "row: notebook link | question | figure)")


def test_index_figures_exist_once_generated():
    links = [u for u in markdown_links(read(INDEX)) if u.lower().endswith((".png", ".svg"))]
    assert links, "the index should show each notebook's picture"
    for u in links:
        assert u.startswith("../figures/"), f"{u!r}: link figures as ../figures/NAME.png"
    if not any(FIG_DIR.glob("*.png")):
        pytest.skip("figures/ has no PNG yet (run `make figures`)")
    missing = [u for u in links if not (NB_DIR / u).resolve().exists()]
    assert not missing, f"the index shows figures that do not exist: {missing}"
    shown = {(NB_DIR / u).resolve() for u in links}
    unshown = sorted(p.name for p in FIG_DIR.glob("*.png") if p.resolve() not in shown)
    assert not unshown, f"figures not shown in 00_index.ipynb: {unshown}"


# -- the checker's own rules, on known inputs -------------------------------------------------

@pytest.mark.parametrize("src, needs_network", [
    ("import requests", True),
    ("from urllib.request import urlopen", True),
    ("!pip install milr", True),
    ("%pip install milr", True),
    ("x = load_dataset('mnist', download=True)", True),
    ("url = 'https://example.org/data.gz'", True),
    ("%matplotlib inline\nimport numpy as np", False),
    ("# see https://arxiv.org/abs/2212.07295\nx = 1", False),
    ("from milr.store import Store\nStore()", False),
    ("label = 'd·w (https is not at the start)'", False),
])
def test_network_rule(src, needs_network):
    assert bool(network_uses(src)) is needs_network


def test_parameters_rule_rejects_code():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("smoke = False\nn = len([1, 2])",
                                          metadata={"tags": ["parameters"]})]
    with pytest.raises(AssertionError, match="only assign literals|literal"):
        parameters(nb)
    nb.cells[0].source = "smoke = False  # tiny settings\nseeds = [0, 1, 2]\n'''note'''"
    assert parameters(nb) == {"smoke": False, "seeds": [0, 1, 2]}


def test_strip_tool_on_an_executed_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata = nbformat.from_dict({
        "kernelspec": {"name": "python3", "display_name": "Python 3 (milr)", "language": "python"},
        "language_info": {"name": "python", "version": "3.11.7"},
        "papermill": {"duration": 1.0}, "widgets": {"state": {}}})
    c0 = nbformat.v4.new_code_cell("smoke = False", metadata={"tags": ["parameters"],
                                                             "execution": {"iopub.status.busy": "2026-01-01T00:00:00Z"}})
    c1 = nbformat.v4.new_code_cell("print(1)", metadata={"tags": [], "scrolled": True})
    c1.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    c1.execution_count = 3
    nb.cells = [c0, c1, nbformat.v4.new_markdown_cell("text")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert stripper.main(["--check", str(path)]) == 1
    assert stripper.main([str(path)]) == 0
    once = path.read_text()
    assert stripper.main(["--check", str(path)]) == 0 and path.read_text() == once
    out = nbformat.read(path, as_version=4)
    assert out.metadata == {"kernelspec": stripper.KERNELSPEC, "language_info": {"name": "python"}}
    assert [c.metadata for c in out.cells] == [{"tags": ["parameters"]}, {}, {}]
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert [c.source for c in out.cells] == ["smoke = False", "print(1)", "text"]
    assert [c.id for c in out.cells] == [c.id for c in nb.cells]


def test_markdown_links_rule():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        '| [A](fig_a.ipynb) | q? | ![a](../figures/a.png) |\n<img src="../figures/b.png" width=300>'
        '\n[paper](https://arxiv.org/abs/2212.07295 "title")')]
    assert markdown_links(nb) == ["fig_a.ipynb", "../figures/a.png",
                                  "https://arxiv.org/abs/2212.07295", "../figures/b.png"]


# -- progress bars: widgets in JupyterLab, text under papermill -------------------------------

_PROBE = '''\
import dataclasses, os, tempfile
from milr.store import Store
from milr.sweep import run_sweep

@dataclasses.dataclass(frozen=True)
class Probe:
    i: int
    kind = "progress_probe"
    def record_config(self):
        return {"i": self.i}
    def compute(self, device="cpu"):
        return {"value": self.i}
'''


def _probe_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("smoke = True", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(_PROBE),
        # as `make figures` runs it: MILR_PROGRESS=text comes from papermill's environment
        nbformat.v4.new_code_cell("df = run_sweep([Probe(i) for i in range(3)], "
                                  "Store(tempfile.mkdtemp()))\nprint(len(df), 'records')"),
        # as JupyterLab runs it (ipywidgets installed): the widget front end
        nbformat.v4.new_code_cell("os.environ.pop('MILR_PROGRESS', None)\n"
                                  "df = run_sweep([Probe(i) for i in range(3)], "
                                  "Store(tempfile.mkdtemp()))\nprint(len(df), 'records')"),
    ]
    return nb


def _outputs_text(cell) -> str:
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(json.dumps(o.data))
    return "".join(parts)


def test_sweep_progress_is_text_under_papermill_and_a_widget_in_lab(tmp_path, monkeypatch):
    pm = pytest.importorskip("papermill")
    pytest.importorskip("ipywidgets")
    src, out = tmp_path / "probe.ipynb", tmp_path / "out.ipynb"
    nbformat.write(_probe_notebook(), src)
    monkeypatch.setenv("MILR_PROGRESS", "text")
    monkeypatch.setenv("JUPYTER_PATH", str(ROOT / ".venv" / "share" / "jupyter"))
    pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path),
                        progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text_run, widget_run = nb.cells[2], nb.cells[3]
    assert "3 records" in _outputs_text(text_run) and "3 records" in _outputs_text(widget_run)
    # interactive: a live widget whose text fallback is tqdm's bar
    assert "application/vnd.jupyter.widget-view+json" in _outputs_text(widget_run)
    # papermill: no widget blob (its stored text would be a frozen "0%" bar), a finished text bar
    assert "widget-view" not in _outputs_text(text_run)
    assert re.search(r"100%\|[^\n]*\| 3/3", _outputs_text(text_run)), _outputs_text(text_run)


# -- JupyterLab: run and save a notebook, git status stays clean ------------------------------

#: the notebook metadata JupyterLab 4 writes when it saves a notebook run with the kernel that
#: `make venv` installs (ipykernel's default spec) or that Binder provides
LAB_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"codemirror_mode": {"name": "ipython", "version": 3},
                      "file_extension": ".py", "mimetype": "text/x-python", "name": "python",
                      "nbconvert_exporter": "python", "pygments_lexer": "ipython3",
                      "version": "3.11.7"},
    "widgets": {"application/vnd.jupyter.widget-state+json": {
        "state": {}, "version_major": 2, "version_minor": 0}},
}


def lab_saved(path: Path) -> str:
    """``path`` as JupyterLab saves it after Run All: outputs (a figure, text, an error-free
    stream), execution counts, execution timings and the kernel's metadata."""
    nb = read(path)
    nb.metadata = nbformat.from_dict(json.loads(json.dumps(LAB_METADATA)))
    for i, c in enumerate(nb.cells, start=1):
        if c.cell_type == "code":
            c.execution_count = i
            c.metadata["execution"] = {"iopub.execute_input": "2026-12-01T10:00:00.000Z",
                                       "shell.execute_reply": "2026-12-01T10:00:01.000Z"}
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text="wrote …\n"),
                         nbformat.v4.new_output("display_data", data={
                             "image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    return nbformat.writes(nb) + "\n"


@functools.lru_cache(maxsize=1)
def clean_filter_command() -> str:
    """The git clean filter `make venv` registers (Makefile ``NBSTRIPOUT``), with this test's
    Python, as a shell command."""
    venv = Path(sys.prefix)  # the virtual environment running the tests
    out = subprocess.run(["make", "-s", "--no-print-directory", "print-filter",
                          f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert "nbstripout" in out, out
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_lab_saved_notebook_filters_to_the_committed_bytes(path):
    pytest.importorskip("nbstripout")
    saved = lab_saved(path)
    assert saved != path.read_text(encoding="utf-8")  # the save did change the file
    cleaned = subprocess.run(clean_filter_command(), shell=True, input=saved, text=True,
                             capture_output=True, check=True).stdout
    assert cleaned == path.read_text(encoding="utf-8"), (
        f"{path.name}: JupyterLab's save, cleaned by the git filter, differs from the "
        "committed file")
    # `make strip` gives the same form
    tmp = ROOT / "build" / f".lab-{path.name}"
    tmp.parent.mkdir(exist_ok=True)
    try:
        tmp.write_text(saved, encoding="utf-8")
        assert stripper.stripped_text(tmp) == cleaned
    finally:
        tmp.unlink(missing_ok=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_make_lab_saves_the_committed_bytes(path):
    """`make lab` sets the pre-save hook: what Lab saves is the committed file, byte for byte."""
    model = {"type": "notebook", "content": json.loads(lab_saved(path))}
    stripper.pre_save_hook(model=model, path=f"notebooks/{path.name}")
    assert nbformat.writes(nbformat.from_dict(model["content"])) + "\n" == path.read_text(
        encoding="utf-8")
    other = {"type": "notebook", "content": json.loads(lab_saved(path))}
    stripper.pre_save_hook(model=other, path=f"build/notebooks/{path.name}")
    assert "image/png" in json.dumps(other["content"])  # executed copies keep their outputs


def test_git_status_clean_after_a_lab_save(tmp_path):
    """A clone set up as `make venv` and `make lab` do it. Saved through the pre-save hook,
    a run notebook leaves `git status` clean; saved by another Lab (outputs on disk), the git
    filter makes `git diff` empty and `git add` stages nothing; a real edit still shows."""
    pytest.importorskip("nbstripout")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    nb_path = NB_DIR / "fig_eta_star_vs_dw.ipynb"
    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    shutil.copy(nb_path, repo / "notebooks" / nb_path.name)

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                               *args], cwd=repo, capture_output=True, text=True, check=True)

    git("init", "-q")
    git("config", "filter.nbstripout.clean", clean_filter_command())
    git("config", "filter.nbstripout.smudge", "cat")
    git("add", ".")
    git("commit", "-qm", "init")
    target = repo / "notebooks" / nb_path.name
    # 1. make lab: the hook strips before writing (as jupyter_server's save does)
    model = {"type": "notebook", "content": json.loads(lab_saved(nb_path))}
    stripper.pre_save_hook(model=model, path=f"notebooks/{nb_path.name}")
    nbformat.write(nbformat.from_dict(model["content"]), target)
    assert git("status", "--porcelain").stdout == ""
    # 2. another JupyterLab: outputs on disk, the clean filter hides them from git
    target.write_text(lab_saved(nb_path), encoding="utf-8")
    assert "image/png" in target.read_text(encoding="utf-8")
    assert git("diff").stdout == ""
    git("add", "-A")
    assert git("status", "--porcelain").stdout == ""
    assert git("diff", "--cached").stdout == ""
    # 3. a real edit is seen
    nb = read(target)
    nb.cells[0].source += "\n\nA real edit."
    nbformat.write(nb, target)
    assert git("status", "--porcelain").stdout.strip() == f"M notebooks/{nb_path.name}"
