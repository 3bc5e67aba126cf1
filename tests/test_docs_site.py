"""The documentation site builds with warnings as errors, and its API reference covers every
public name (each package's `__all__`) and nothing private."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import distopt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 600  # seconds: mkdocstrings imports and renders the whole package


def public_packages() -> list[str]:
    """`distopt` and every subpackage whose dotted name has no `_private` part."""
    names = ["distopt"]
    for info in pkgutil.walk_packages(distopt.__path__, "distopt."):
        if info.ispkg and not any(p.startswith("_") for p in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def public_names() -> list[str]:
    """Every name in a public package's `__all__` that is not a module or a dunder."""
    out = []
    for package in public_packages():
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            if name.startswith("__") or inspect.ismodule(getattr(module, name)):
                continue
            out.append(f"{package}.{name}")
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]  # fmt: skip
    if missing:
        reason = f"the `docs` extra is not installed (missing {missing}): pip install -e '.[docs]'"
        print(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _ids(site: Path) -> set[str]:
    ids = set()
    for page in (site / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(distopt[.\w]*)"', page.read_text()))
    return ids


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_site_builds_strict_and_documents_every_public_name(site):
    ids = _ids(site)
    missing = [name for name in public_names() if name not in ids]
    assert not missing, (
        "Public names (in a package's __all__) missing from the API reference; add a "
        "`::: <name>` line to the package's page in docs/api/ (and the page to mkdocs.yml):\n"
        + "\n".join(f"  {name}" for name in missing)
    )
    # the members a user of the numpy path reaches for first
    for member in ("distopt.Variable.value", "distopt.Variable.assign",
                   "distopt.distribute.Strategy.communicator", "distopt.comm.Communicator.rank",
                   "distopt.optimizers.Optimizer.apply_gradients"):  # fmt: skip
        assert member in ids, member


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_api_reference_shows_nothing_private(site):
    private = sorted(i for i in _ids(site) if any(p.startswith("_") for p in i.split(".")))
    assert not private, f"private names in the API reference: {private}"


def test_api_pages_name_only_public_objects():
    directives = []
    for page in DOCS.rglob("*.md"):
        directives += re.findall(r"^:::\s*(\S+)", page.read_text(), flags=re.MULTILINE)
    assert directives
    private = [d for d in directives if any(p.startswith("_") for p in d.split("."))]
    assert not private, private
    public = set(public_names())
    unknown = [d for d in directives if d not in public]
    assert not unknown, f"`:::` directives for names no package exports: {unknown}"


def test_public_packages_include_the_layers():
    assert {"distopt.optimizers", "distopt.distribute", "distopt.comm"} <= set(public_packages())
