"""The documentation site builds with ``mkdocs build --strict``: a broken link, a page missing
from the navigation or a docstring the API reference cannot resolve fails the build.

The tutorials are rendered without being executed here (``DIFFLAB_DOCS_EXECUTE=false``):
tests/docs/test_tutorials.py executes them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def needs(module: str):
    """The docs extra's module; a skip on a developer's machine without it, an error in CI."""
    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module, reason="needs the docs extra: pip install -e '.[docs]'")


needs("mkdocs")
needs("material")

REPO = Path(__file__).resolve().parents[2]


def build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIFFLAB_DOCS_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_site_builds_strictly(tmp_path):
    proc = build(REPO / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    site = tmp_path / "site"
    # the pages of every part of the navigation exist and hold what they should
    api = (site / "api" / "diffusion" / "index.html").read_text()
    assert "q_sample" in api and "DDPM eq. 4" in api and "bits_per_dim" in api
    assert "eps_bound_weights" in (site / "api" / "schedules" / "index.html").read_text()
    tutorial = (site / "tutorials" / "06_ddim" / "index.html").read_text()
    assert "ddim_invert" in tutorial and "DDIM eq. 12" in tutorial
    assert "torchrun" in (site / "scale-out" / "index.html").read_text()
    assert "DDPM eq. 14" in (site / "equations" / "index.html").read_text()
    for page in ("getting-started", "guide/training", "guide/sampling", "guide/guidance", "guide/latent",
                 "guide/evaluation", "guide/reliability", "guide/python-api", "tutorials"):
        assert (site / page / "index.html").is_file(), page
    # the reStructuredText of the docstrings became Markdown (no raw double backticks or roles)
    assert "``" not in api and ":class:`" not in (site / "api" / "latent" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    (tmp_path / "difflab").symlink_to(REPO / "difflab")
    page = tmp_path / "docs" / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    proc = build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr
