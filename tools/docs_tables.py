"""The result tables in the docs are the output of the `transfer compare` command above each,
not typed by hand: check that they still are, or write them again.

A table sits between `<!-- NAME -->` and `<!-- /NAME -->`; its command is the last
`transfer compare` line of the last bash block before it (continuation lines joined). The
command runs in process from the repository root, on the shipped CSV files (a `--plot` drawn
in a scratch folder); a table that differs is listed and the exit status is 1, or with
`--write` the command's output replaces it (and its plot is drawn again in place).

The README's verdict table is typed by hand from those pages, so each of its numbers (a
difference with its interval, `+4.6 [+2.5, +6.6]`, and a mean with its spread, `90.4 ± 1.6`)
is checked to appear on a docs page (results or benchmarks; a compare sentence's "+4.6
points (95% CI +2.5 to +6.6" counts as `+4.6 [+2.5, +6.6]`): a README number no page
holds is listed and the exit status is 1 (`--write` leaves the README to be edited by hand).

    python tools/docs_tables.py [--write] [docs/results.md ...]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

from cli import main as transfer  # noqa: E402
DOCS = [ROOT / "docs" / "results.md", ROOT / "docs" / "comparing.md"]
SOURCES = [ROOT / "docs" / "results.md", ROOT / "docs" / "benchmarks.md"]  # where the README's verdicts come from
BLOCK = re.compile(r"<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->", re.S)
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def tables(text: str):
    """(name, start, end, compare arguments) of each table block of a page."""
    for block in BLOCK.finditer(text):
        fences = list(FENCE.finditer(text, 0, block.start()))
        if not fences:
            raise ValueError(f"table {block.group(1)}: no bash block above it")
        lines = fences[-1].group(1).replace("\\\n", " ").splitlines()
        compare = [line for line in lines if line.strip().startswith("transfer compare ")]
        if not compare:
            raise ValueError(f"table {block.group(1)}: no `transfer compare` command in the bash block above it")
        yield block.group(1), block.start(2), block.end(2), shlex.split(compare[-1])[2:]


def output(arguments: list[str], plots: Path | None = None) -> str:
    """What `transfer compare ARGUMENTS` prints from the repository root (its --plot written
    under `plots` instead, when given)."""
    if plots is not None and "--plot" in arguments:
        at = arguments.index("--plot") + 1
        arguments = [*arguments[:at], str(plots / Path(arguments[at]).name), *arguments[at + 1:]]
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(transfer, ["compare", *arguments])
    finally:
        os.chdir(here)
    if result.exit_code != 0:
        raise RuntimeError(f"transfer compare {shlex.join(arguments)}: exit {result.exit_code}\n{result.output}")
    return result.stdout


def refresh(page: Path, write: bool) -> list[str]:
    """The names of the page's tables that differ from their command's output (rewritten when `write`)."""
    text = page.read_text(encoding="utf-8")
    stale, parts, end = [], [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for name, start, stop, arguments in tables(text):
            fresh = output(arguments, Path(scratch))
            if text[start:stop] != fresh:
                stale.append(name)
                if write:
                    output(arguments)  # its plot too, where the page shows it
            parts += [text[end:start], fresh]
            end = stop
    if write and stale:
        page.write_text("".join(parts) + text[end:], encoding="utf-8")
    return stale


INTERVAL = r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]"
SPREAD = r"\d+\.\d ± \d+\.\d"
# how the pages say a difference and its interval: compare's "+4.6 points (95% CI +2.5 to +6.6",
# the prose's "+4.6 (+2.5 to +6.6)" and "+4.6 points (95% interval +2.5 to +6.6"
SAID = re.compile(r"([+-]\d+\.\d)\**(?: points)? \((?:95% (?:CI|interval) )?([+-]\d+\.\d)\s+to\s+([+-]\d+\.\d)")


def unsupported(readme: str, pages: list[str]) -> list[str]:
    """The numbers of the README's verdict table (its section "Does it pay?") that no page holds."""
    section = readme.split("## Does it pay?", 1)[-1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    if len(rows) < 3:
        raise ValueError("README.md: no verdict table under '## Does it pay?'")
    said = "\n".join(SAID.sub(r"\1 [\2, \3]", page) for page in pages)
    return [number for row in rows for number in re.findall(f"{INTERVAL}|{SPREAD}", row) if number not in said]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, default=DOCS)
    parser.add_argument("--write", action="store_true", help="replace every table that differs (and its plot)")
    args = parser.parse_args(argv)
    stale = {page: refresh(page, args.write) for page in args.pages}
    for page, names in stale.items():
        for name in names:
            print(f"{page}: table {name} {'written again' if args.write else 'differs from its command'}")
    missing = unsupported((ROOT / "README.md").read_text(encoding="utf-8"),
                          [page.read_text(encoding="utf-8") for page in SOURCES])
    for number in missing:
        print(f"README.md: the verdict table's {number} is on no page of {', '.join(p.name for p in SOURCES)}")
    return 1 if missing or (any(stale.values()) and not args.write) else 0


if __name__ == "__main__":
    sys.exit(main())
