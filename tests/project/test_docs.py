"""The README stays short, and every link and repository path in README.md and docs/ exists."""
import glob
import os
import re

import pytest

from helpers import ROOT

PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
TOP = ("jaxsup/", "pallas_kernels/", "configs/", "launch/", "tests/", "benchmarks/", "scripts/", "docs/", ".ci/")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE = re.compile(r"`([^`\s]+)`")


def text(page: str) -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def repo_paths(page: str) -> set[str]:
    """Backticked paths into the repository (a test id's `::name` and a config's `:switch` cut off)."""
    found = set()
    for token in CODE.findall(text(page)):
        path = token.split("::")[0].split(":")[0].rstrip(".,;")
        if path.startswith(TOP) and not any(c in path for c in "<>*{}[]|$"):
            found.add(path)
    return found


def test_readme_is_at_most_150_lines():
    assert len(text("README.md").splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    base = os.path.dirname(os.path.join(ROOT, page))
    missing = [link for link in LINK.findall(text(page))
               if "://" not in link and not os.path.exists(os.path.join(base, link))]
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES)
def test_every_repository_path_exists(page):
    missing = sorted(p for p in repo_paths(page) if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, missing


def test_no_page_cites_files_outside_the_repository():
    for page in PAGES:
        assert "DESIGN.md" not in text(page) and "../shared" not in text(page), page
