"""The README a newcomer reads and the reference site in docs/: short, and no broken links."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build(root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, env=env, cwd=root)


def test_the_docs_site_builds_strictly_and_a_broken_anchor_fails_it(tmp_path):
    done = _build(ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "results" / "index.html").is_file()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copytree(ROOT / "docs", copy / "docs")
    with open(copy / "docs" / "index.md", "a") as f:
        f.write("\nSee [nothing](data.md#no-such-section).\n")
    broken = _build(copy, tmp_path / "broken")
    assert broken.returncode != 0 and "no-such-section" in broken.stdout + broken.stderr


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to its docs pages"
    for link in local:
        assert (ROOT / link).exists(), link
    commands = re.findall(r"```bash\n(pip install[^\n]*)\n```", text)
    assert commands == ['pip install -e . && transfer demo', 'pip install -e ".[test]" && python -m pytest -q']
