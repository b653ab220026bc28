"""Speak ahead of time, with the real espeak-ng, every sentence the tests and benchmarks
speak, for a machine without espeak-ng (the lent GPU machine), where `espeak-ng` beside
this file serves them.

    python bench/gpu/speak_ahead.py OUT_DIR

The sentences are the SPEECH / SENTENCES constants of tests/conftest.py and bench/*.py,
at every speed those files pass (-s N) and at espeak-ng's default.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["tests/conftest.py", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("bench/*.py"))]
DEFAULT_SPEED = "175"  # espeak-ng's words per minute without -s
SPEED_FLAG = re.compile(r'"-s",\s*"(\d+)"')


def cache_key(speed: str, text: str) -> str:
    return hashlib.sha1(f"{speed}|{text}".encode()).hexdigest()


def sentences(path: Path) -> set:
    """(speed, text) for every sentence constant of the file, at each speed it uses."""
    source = path.read_text()
    speeds = set(SPEED_FLAG.findall(source)) | {DEFAULT_SPEED}
    texts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("SPEECH", "SENTENCES") for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            texts.extend([value] if isinstance(value, str) else value)
    return {(speed, text) for speed in speeds for text in texts}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    wanted = set().union(*(sentences(ROOT / source) for source in SOURCES))
    for speed, text in sorted(wanted):
        subprocess.run(["espeak-ng", "-s", speed, "-w", str(out / f"{cache_key(speed, text)}.wav"),
                        text], check=True)
    print(f"{len(wanted)} sentences spoken into {os.fspath(out)}")


if __name__ == "__main__":
    main()
