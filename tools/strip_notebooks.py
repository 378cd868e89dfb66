"""Strip notebooks for git: no outputs, no execution counts, one canonical set of metadata.

Usage: ``python tools/strip_notebooks.py [--check] [NOTEBOOK ...]`` (default: notebooks/*.ipynb;
``make strip`` runs it). ``--check`` changes nothing and exits with status 1, listing the
notebooks that are not stripped. A stripped notebook is a fixed point: stripping it again gives
the same bytes, so committed notebooks only show real edits in diffs.

What is kept (our choice, so that saving a notebook in JupyterLab, running it with papermill or
in another Python version does not produce a diff): cell sources, cell ids, attachments, and the
cell metadata ``tags`` (papermill's ``parameters`` tag), ``jupyter`` (hidden sources) and
``slideshow``; the notebook metadata becomes exactly ``kernelspec`` = python3 with ipykernel's
default display name "Python 3 (ipykernel)" and ``language_info`` = {"name": "python"}.
Everything else (outputs, timings, papermill provenance, saved widget state, the Python
version) is removed. The git filter that ``make venv`` registers (nbstripout, see
``.gitattributes`` and the Makefile's ``NBSTRIPOUT``) gives the same bytes for a notebook
saved by JupyterLab with that kernel (tested in ``tests/test_notebooks_meta.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
#: ipykernel's default kernelspec (what `make venv` installs and Binder has): JupyterLab keeps it
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python"}
KEEP_CELL_METADATA = ("tags", "jupyter", "slideshow")


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip ``nb`` in place (see the module docstring) and return it.

    Raises ``ValueError`` if ``nb`` is not nbformat version 4.
    """
    if nb.nbformat != 4:
        raise ValueError(f"nbformat={nb.nbformat} is not supported; allowed: 4")
    nb.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC),
                                      "language_info": dict(LANGUAGE_INFO)})
    for cell in nb.cells:
        meta = {k: cell.metadata[k] for k in KEEP_CELL_METADATA if k in cell.metadata}
        if not meta.get("tags", True):
            del meta["tags"]  # an empty tag list is noise
        cell.metadata = nbformat.from_dict(meta)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def pre_save_hook(model: dict, path: str = "", **kwargs) -> None:
    """Jupyter server's ``ContentsManager.pre_save_hook`` (``make lab`` sets it): a notebook
    under ``notebooks/`` is saved stripped, so running and saving it in JupyterLab leaves the
    file byte-identical to its committed form and ``git status`` clean. Outputs stay in the open
    tab; they are not written to disk. Other files and notebooks elsewhere (``build/``) are
    saved as they are."""
    if model.get("type") != "notebook" or not str(path).startswith("notebooks/"):
        return
    nb = nbformat.from_dict(model["content"])
    model["content"] = strip(nb)


def stripped_text(path: Path) -> str:
    """The text that ``path`` should contain once stripped (nbformat's canonical JSON)."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    return nbformat.writes(strip(nb)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report; exit 1 if any is dirty")
    ap.add_argument("notebooks", nargs="*", type=Path)
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for p in paths:
        new = stripped_text(p)
        if p.read_text(encoding="utf-8") != new:
            dirty.append(p)
            if not args.check:
                p.write_text(new, encoding="utf-8")
    verb = "not stripped" if args.check else "stripped"
    for p in dirty:
        print(f"{verb}: {p}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
