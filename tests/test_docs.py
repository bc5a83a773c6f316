"""The README a newcomer reads and the reference site in docs/: short, and no broken links."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    """At most 150 lines, its terms defined in a glossary, no release history (that is in
    CHANGELOG.md), the two set-up commands and working links."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "## Glossary" in text and (ROOT / "CHANGELOG.md").is_file()
    for history in ("this release", "the previous release", "the default before", "used to"):
        assert history not in text, history
    glossary = text.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    for term in ("readout", "projection head", "pooled maps", "blind draw", "oracle", "typiclust", "FixMatch", "AdaBN"):
        assert f"**{term}" in glossary, term
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to its docs pages"
    for link in local:
        assert (ROOT / link).exists(), link
    commands = re.findall(r"```bash\n(pip install[^\n]*)\n```", text)
    assert commands == ['pip install -e . && transfer demo', 'pip install -e ".[test]" && python -m pytest -q']


def _docs_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_results_table_is_the_output_of_the_command_above_it(tmp_path):
    """docs/results.md says its tables are not typed by hand: each is what its `transfer compare`
    command prints from the shipped CSVs today (tools/docs_tables.py --write makes them so)."""
    tables = _docs_tables()
    page = tmp_path / "results.md"
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert len(list(tables.tables(text))) >= 8
    page.write_text(text, encoding="utf-8")
    assert tables.refresh(page, write=False) == []
    # a number edited by hand, or a command whose --where was dropped, is caught and written back
    edited = text.replace("| animals | scratch | 2 | 5 | 55.9 ± 3.7 |", "| animals | scratch | 2 | 5 | 56.9 ± 3.7 |", 1)
    edited = edited.replace("--where \"experiment == 'digits_low'\" ", "", 1)
    assert edited.count("56.9 ± 3.7") == 1 and "digits_low'" not in edited
    page.write_text(edited, encoding="utf-8")
    assert tables.main([str(page)]) == 1
    assert tables.refresh(page, write=True) == ["animals-table", "digits-low-table"]
    written = page.read_text(encoding="utf-8")
    assert "55.9 ± 3.7" in written  # the shipped row again
    assert "| digits | contrastive-finetuned [experiment=digits_low] | 2 | 5 |" in written  # the bare command shows
    assert "| digits | contrastive-finetuned [experiment=digits_low_avg_readout] | 2 | 5 |" in written  # both grids
    assert tables.refresh(page, write=False) == []


def test_every_number_of_the_readme_verdict_table_is_on_a_docs_page():
    """The verdict table is typed from docs/results.md and docs/benchmarks.md: each difference
    with its interval and each mean with its spread must be one those pages hold (as compare
    prints it or as the prose says it), so a re-run that changes a page leaves no stale verdict."""
    tables = _docs_tables()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = [page.read_text(encoding="utf-8") for page in tables.SOURCES]
    assert tables.unsupported(readme, pages) == []
    assert "+23.6 [+12.8, +34.3]" in readme and "62.2 ± 2.5" in readme  # numbers the check reads
    edited = readme.replace("+23.6 [+12.8, +34.3]", "+23.6 [+12.8, +34.9]").replace("62.2 ± 2.5", "62.2 ± 2.6")
    assert sorted(tables.unsupported(edited, pages)) == ["+23.6 [+12.8, +34.9]", "62.2 ± 2.6"]
    # the compare sentence and the prose forms of a difference both count
    assert tables.unsupported(readme, [tables.SAID.sub("", page) for page in pages]) != []
    with pytest.raises(ValueError, match="no verdict table"):
        tables.unsupported("# transfer\n", pages)


@pytest.mark.slow
def test_the_python_api_page_runs_as_it_is(tmp_path, monkeypatch, capsys):
    """docs/api.md's example, run as written (in a fresh folder): every function returns what the
    page says; importing transfer loads no TensorFlow; a bad option is a TransferError."""
    text = (ROOT / "docs" / "api.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(example) == 1
    done = subprocess.run([sys.executable, "-c", "import sys, transfer; print('tensorflow' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example[0], "docs/api.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert re.search(r"seed 0: test accuracy 0\.\d{3}", printed) and "seed 1: test accuracy" in printed
    assert isinstance(namespace["features"], list) and {"method", "readout", "knn_accuracy"} <= set(namespace["features"][0])
    assert (tmp_path / "runs" / "to_label.csv").is_file() and namespace["chosen"]["command"] == "select"
    summary = namespace["summary"]
    assert summary.loc[summary["method"] == "contrastive-finetuned", "n"].item() == 2
    import transfer

    with pytest.raises(transfer.TransferError, match="labels_per_class"):
        transfer.fine_tune(data="digits", encoder="runs/api-enc", labels_per_class=0, out="x")
