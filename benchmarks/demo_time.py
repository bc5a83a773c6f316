"""How long `transfer demo` takes, as a user runs it: a fresh process, the defaults, wall clock.

The README promises a first contact in about 3 minutes on 2 CPU cores (#48). Each repeat
runs `transfer demo --out TMP` in a new process and prints its wall time, the demo's own
split (pretrain, fine-tune, compare) and the headline it printed.

    python benchmarks/demo_time.py [--repeats 1] [--output demo.txt]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", help="also save the last demo's own output (what the README quotes) here")
    args = parser.parse_args()
    print("| repeat | wall s | pretrain s | fine-tune s | compare s | headline |")
    print("|---:|---:|---:|---:|---:|---|")
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", "from cli import main; main()", "demo", "--out",
                                   str(Path(tmp) / "demo")], cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
        if args.output:
            Path(args.output).write_text(done.stdout)
        if done.returncode != 0:
            raise SystemExit(f"demo failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        split = dict(re.findall(r"(pretrain|fine-tune|compare) (\d+)s", done.stdout.splitlines()[-1]))
        headline = next((line.strip() for line in done.stdout.splitlines() if line.strip().startswith("digits:")), "")
        print(f"| {k} | {wall:.0f} | {split.get('pretrain', '')} | {split.get('fine-tune', '')} | "
              f"{split.get('compare', '')} | {headline} |")


if __name__ == "__main__":
    main()
