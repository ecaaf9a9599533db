"""House rule: no product function is longer than 60 lines (ruff has no such rule).

Parameters (at most 6) are checked by ruff's PLR0913 in `make lint`; this test counts lines.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

PRODUCT: Final = Path(__file__).resolve().parents[2] / "fintech_operator"
LINES_MAX: Final = 60
# Being reshaped by issue 12's application layer; remove each entry when its file complies.
EXEMPT: Final = frozenset(
    {
        "handlers/recon.py",
        "handlers/reviews.py",
    }
)


def long_functions(source: str, lines_max: int) -> list[tuple[str, int]]:
    """Every function or method of ``source`` longer than ``lines_max`` lines (from its
    ``def`` to its last line, decorators not counted), as (name, lines)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > lines_max:
                found.append((node.name, lines))
    return found


def test_the_check_finds_a_long_function() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(LINES_MAX))
    assert long_functions(f"def f():\n{body}", LINES_MAX) == [("f", LINES_MAX + 1)]
    method = "".join(f"        x{i} = {i}\n" for i in range(LINES_MAX))
    assert long_functions(f"class C:\n    async def g(self):\n{method}", LINES_MAX) == [
        ("g", LINES_MAX + 1)
    ]
    short = "".join(f"    x{i} = {i}\n" for i in range(LINES_MAX - 1))
    assert long_functions(f"@decorator\ndef f():\n{short}", LINES_MAX) == []


@pytest.mark.parametrize(
    "path",
    sorted(
        path for path in PRODUCT.rglob("*.py") if path.relative_to(PRODUCT).as_posix() not in EXEMPT
    ),
    ids=lambda path: path.relative_to(PRODUCT).as_posix(),
)
def test_no_product_function_is_longer_than_60_lines(path: Path) -> None:
    assert long_functions(path.read_text(encoding="utf-8"), LINES_MAX) == []
