"""The documentation: the site builds strictly (in `make lint`), the README stays short, and the tables the docs
share with the code are generated from it (issue 16)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MODULES_START, MODULES_END = "<!-- modules:start -->", "<!-- modules:end -->"


def module_table() -> str:
    """Every module of the package with the first sentence of its docstring, as a Markdown table."""
    rows = []
    for path in sorted((ROOT / "bakesteer").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        rows.append(f"| `{path.relative_to(ROOT / 'bakesteer')}` | {first.replace('|', '/')} |")
    return "\n".join([MODULES_START, "| module | what it holds |", "| --- | --- |", *rows, MODULES_END])


def _block(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end) + len(end)]


def test_development_page_names_every_module() -> None:
    page = (DOCS / "development.md").read_text()
    assert _block(page, MODULES_START, MODULES_END) == module_table(), "regenerate: python tests/test_docs.py --write"


def test_every_module_has_a_docstring() -> None:
    assert "|  |" not in module_table()


def test_readme_is_short_and_links_only_to_pages_that_exist() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links the documentation"
    for link in links:
        assert (ROOT / link).is_file(), link


def test_every_docs_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f" {page.name}" in config, f"{page.name} is not in mkdocs.yml's nav"


def _build(docs: Path, site: Path) -> subprocess.CompletedProcess[str]:
    site.parent.mkdir(parents=True, exist_ok=True)
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (site.parent / "mkdocs.yml").write_text(config.replace("paths: [.]", f"paths: [{ROOT}]"))
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(site.parent / "mkdocs.yml")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([*command, "-d", str(site)], capture_output=True, text=True, env=env, timeout=300)


def test_docs_site_builds_strictly_and_a_broken_link_fails_it(tmp_path: Path) -> None:
    import shutil

    good = _build(DOCS, tmp_path / "ok" / "site")
    assert good.returncode == 0, good.stderr[-2000:]
    assert (tmp_path / "ok" / "site" / "api" / "index.html").read_text().count("read_output") >= 1  # the API rendered
    broken = tmp_path / "docs"
    shutil.copytree(DOCS, broken)
    (broken / "index.md").write_text((broken / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    bad = _build(broken, tmp_path / "bad" / "site")
    assert bad.returncode != 0 and "no-such-page.md" in bad.stderr


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    path = DOCS / "development.md"
    text = path.read_text()
    path.write_text(text.replace(_block(text, MODULES_START, MODULES_END), module_table()))
