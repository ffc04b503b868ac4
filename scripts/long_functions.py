"""Lists the functions longer than a limit (80 lines by default) in the Python and Rust sources
given (default: every folder of code), and exits 1 when there are any.

A function's length runs from its first decorator or attribute-free ``def``/``fn`` line to its
last line, comments and docstrings included. Python functions are found with ``ast``; Rust ones
by matching braces after ``fn`` (string literals and line comments are skipped), which is enough
for this code base's style (rustfmt).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

LIMIT = 80
ROOTS = ("python", "rust", "benches", "tests", "studies", "testkit")
_RUST_FN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
_RUST_STRING = re.compile(r'"(\\.|[^"\\])*"')


def python_functions(path: Path) -> Iterator[tuple[int, int, str]]:
    """(first line, length, name) of every function in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            last = node.end_lineno if node.end_lineno is not None else node.lineno
            yield first, last - first + 1, node.name


def rust_functions(path: Path) -> Iterator[tuple[int, int, str]]:
    """(first line, length, name) of every function with a body in a Rust file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for start, line in enumerate(lines):
        match = _RUST_FN.match(line)
        if match is None:
            continue
        depth, opened = 0, False
        for end in range(start, len(lines)):
            code = _RUST_STRING.sub('""', lines[end]).split("//")[0]
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            if opened and depth <= 0:
                yield start + 1, end - start + 1, match.group(6)
                break
            if not opened and code.rstrip().endswith(";"):
                break  # a declaration without a body


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(r) for r in ROOTS]
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            found += [(n, f"{path}:{line} {name}") for line, n, name in python_functions(path)]
        for path in sorted(root.rglob("*.rs")):
            found += [(n, f"{path}:{line} {name}") for line, n, name in rust_functions(path)]
    long = sorted((item for item in found if item[0] > LIMIT), reverse=True)
    for length, where in long:
        print(f"{length} lines: {where}")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
