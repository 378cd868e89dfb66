"""The conda/Binder environment (environment.yml + postBuild) cannot drift from pyproject.toml.

Binder builds the reader's environment from environment.yml (conda-forge), while `make venv`
and CI install pyproject.toml's dependencies with pip. These tests compare the two by
normalised package name, through an explicit pip -> conda-forge name map, in both directions,
and check that each conda version constraint admits versions that pyproject.toml allows.
Binder itself (repo2docker, Docker) cannot run here: what it reads is validated statically.
"""
from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / "environment.yml"
POSTBUILD = ROOT / "postBuild"

#: pip name (normalised) -> conda-forge name, where they differ or where we choose a variant.
PIP_TO_CONDA = {
    "torch": "pytorch-cpu",  # CPU-only build: no CUDA libraries in a Binder image
    "matplotlib": "matplotlib-base",  # no Qt GUI stack
    "seaborn": "seaborn-base",  # no optional statsmodels
    "dask": "dask",  # conda-forge's "dask" includes distributed (pip: dask[distributed])
}
#: conda entries that are infrastructure, not runtime dependencies of milr.
CONDA_ONLY = {"python", "pip"}


def normalise(name: str) -> str:
    """PEP 503 normalised name: lower case, runs of -_. become one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_name(pip_name: str) -> str:
    n = normalise(pip_name)
    return PIP_TO_CONDA.get(n, n)


_CONDA_SPEC = re.compile(r"^\s*(?:[\w.-]+::)?(?P<name>[A-Za-z0-9_.-]+)\s*(?P<spec>[^#]*?)\s*$")


def parse_conda_dep(dep: str) -> tuple[str, str]:
    """'numpy =2.4' -> ('numpy', '=2.4'); 'conda-forge::pytorch-cpu >=2.12,<2.14' -> name, spec."""
    m = _CONDA_SPEC.match(dep)
    if m is None:
        raise ValueError(f"cannot parse conda dependency {dep!r}")
    return normalise(m["name"]), m["spec"].replace(" ", "")


def conda_spec_to_pep440(spec: str) -> SpecifierSet:
    """Conda's match spec (version part only) as a PEP 440 SpecifierSet.

    Handles what environment.yml uses: '' (any), '=X.Y' (X.Y.*), '==X.Y.Z', and comma-joined
    comparisons ('>=2.12,<2.14'). A build string (a second '=' field) is rejected here.
    """
    if not spec:
        return SpecifierSet()
    if spec.startswith("=") and not spec.startswith("=="):
        v = spec[1:]
        if "=" in v:
            raise ValueError(f"build strings are not supported here: {spec!r}")
        return SpecifierSet(f"=={v.rstrip('.*')}.*")
    return SpecifierSet(spec)


def lowest_allowed(spec: SpecifierSet) -> Version | None:
    """The smallest version named by a '==X.*', '==X' or '>=X' clause (None if unbounded)."""
    lows = []
    for s in spec:
        if s.operator in ("==", ">=", "~="):
            lows.append(Version(s.version.rstrip(".*")))
    return max(lows) if lows else None


@pytest.fixture(scope="module")
def env():
    with open(ENV_FILE) as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def project():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


@pytest.fixture(scope="module")
def conda_deps(env):
    """{normalised conda name: spec} of the conda (non-pip) dependencies."""
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, spec = parse_conda_dep(dep)
            assert name not in out, f"environment.yml lists {name!r} twice"
            out[name] = spec
    return out


@pytest.fixture(scope="module")
def pip_deps(env):
    """{normalised name: Requirement} of the entries in environment.yml's 'pip:' section."""
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if line.startswith(("-", ".", "/")) or "://" in line:
                    pytest.fail(f"environment.yml pip entry {line!r}: install the project in "
                                "postBuild with --no-deps, not from environment.yml")
                req = Requirement(line)
                out[normalise(req.name)] = req
    return out


@pytest.fixture(scope="module")
def runtime(project):
    """{normalised pip name: Requirement} of pyproject.toml's [project] dependencies."""
    return {normalise(Requirement(r).name): Requirement(r) for r in project["dependencies"]}


# -- structure of what repo2docker reads ------------------------------------------------------

def test_environment_yml_structure(env):
    assert set(env) <= {"name", "channels", "dependencies"}, set(env)
    assert env["channels"][0] == "conda-forge", "conda-forge must be the first channel"
    assert "defaults" not in env["channels"], "mixing 'defaults' with conda-forge breaks solves"
    deps = env["dependencies"]
    assert isinstance(deps, list) and deps
    for dep in deps:
        assert isinstance(dep, str) or (isinstance(dep, dict) and set(dep) == {"pip"}), dep


def test_repo2docker_reads_top_level_files():
    # repo2docker uses binder/ (or .binder/) exclusively when it exists and then ignores the
    # top-level environment.yml and postBuild: keep a single source of truth at the top.
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists()
    # A Dockerfile replaces every other configuration file; a requirements.txt next to
    # environment.yml is ignored by repo2docker's conda build pack (a second list to drift).
    for other in ("Dockerfile", "requirements.txt"):
        assert not (ROOT / other).exists(), f"{other} changes or confuses the Binder build"


def test_python_version_allowed_by_pyproject(conda_deps, project):
    spec = conda_spec_to_pep440(conda_deps["python"])
    low = lowest_allowed(spec)
    assert low is not None, "pin Python's major.minor so Binder's image matches CI's"
    assert SpecifierSet(project["requires-python"]).contains(low), (low, project["requires-python"])


def test_every_runtime_dependency_is_in_environment_yml(runtime, conda_deps, pip_deps):
    missing = [n for n in runtime if conda_name(n) not in conda_deps and n not in pip_deps]
    assert not missing, (f"pyproject.toml dependencies missing from environment.yml: {missing} "
                         f"(conda-forge names: {[conda_name(n) for n in missing]})")


def test_environment_yml_has_nothing_pyproject_lacks(runtime, conda_deps, pip_deps):
    expected = {conda_name(n) for n in runtime}
    extra = sorted(set(conda_deps) - expected - CONDA_ONLY)
    extra += sorted(set(pip_deps) - set(runtime))
    assert not extra, f"environment.yml lists packages that pyproject.toml does not: {extra}"


def test_no_package_both_conda_and_pip(conda_deps, pip_deps):
    both = [n for n in pip_deps if conda_name(n) in conda_deps]
    assert not both, f"installed twice (conda and pip): {both}"


def test_versions_compatible(runtime, conda_deps, pip_deps):
    """Each environment.yml constraint's lowest version satisfies pyproject.toml's specifier."""
    problems = []
    for name, req in runtime.items():
        if name in pip_deps:
            spec = pip_deps[name].specifier
        elif conda_name(name) in conda_deps:
            spec = conda_spec_to_pep440(conda_deps[conda_name(name)])
        else:
            continue  # reported by test_every_runtime_dependency_is_in_environment_yml
        low = lowest_allowed(spec)
        if low is None:
            problems.append(f"{name}: no version pinned in environment.yml")
        elif not req.specifier.contains(low, prereleases=True):
            problems.append(f"{name}: environment.yml allows {low}, pyproject wants {req.specifier}")
    assert not problems, problems


def test_torch_is_the_cpu_build(conda_deps):
    assert "pytorch-cpu" in conda_deps
    assert not any(n in conda_deps for n in ("pytorch-gpu", "cudatoolkit", "cuda-version"))


def test_postbuild_installs_milr_editable_without_deps():
    text = POSTBUILD.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert POSTBUILD.stat().st_mode & stat.S_IXUSR, "postBuild must be executable"
    assert "set -euo pipefail" in text
    cmds = [ln.strip() for ln in text.splitlines() if "pip install" in ln and
            not ln.lstrip().startswith("#")]
    assert cmds == ["python -m pip install --no-deps -e ."], cmds


# -- the checker's own parsing, on known inputs -----------------------------------------------

@pytest.mark.parametrize("dep, name, spec", [
    ("numpy =2.4", "numpy", "=2.4"),
    ("conda-forge::pytorch-cpu >=2.12,<2.14", "pytorch-cpu", ">=2.12,<2.14"),
    ("PyYAML", "pyyaml", ""),
    ("matplotlib_base ==3.11.2", "matplotlib-base", "==3.11.2"),
])
def test_parse_conda_dep(dep, name, spec):
    assert parse_conda_dep(dep) == (name, spec)


@pytest.mark.parametrize("spec, inside, outside", [
    ("=2.4", "2.4.6", "2.5.0"),
    (">=2.12,<2.14", "2.13.0", "2.14.0"),
    ("==1.17.1", "1.17.1", "1.17.2"),
])
def test_conda_spec_to_pep440(spec, inside, outside):
    s = conda_spec_to_pep440(spec)
    assert s.contains(inside) and not s.contains(outside)


def test_conda_spec_rejects_build_string():
    with pytest.raises(ValueError, match="build"):
        conda_spec_to_pep440("=2.13=cpu_*")


def test_lowest_allowed():
    assert lowest_allowed(conda_spec_to_pep440(">=2.12,<2.14")) == Version("2.12")
    assert lowest_allowed(conda_spec_to_pep440("=3.11")) == Version("3.11")
    assert lowest_allowed(SpecifierSet()) is None


def test_apt_txt_brings_fashion_mnist_where_milr_looks():
    """Binder images get Fashion-MNIST from Debian/Ubuntu's package, like .ci/run does."""
    from milr.data import DEBIAN_FASHION_MNIST

    lines = [ln.split("#")[0].strip() for ln in (ROOT / "apt.txt").read_text().splitlines()]
    packages = [ln for ln in lines if ln]
    assert packages == ["dataset-fashion-mnist"], packages
    assert str(DEBIAN_FASHION_MNIST) == "/usr/share/datasets/fashion-mnist"
    assert "dataset-fashion-mnist" in (ROOT / ".ci" / "run").read_text()
