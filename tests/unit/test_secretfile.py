"""Mounted Secret files: read whole and bounded, trailing line break dropped, errors named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fintech_operator import secretfile


def test_the_text_comes_back_without_its_trailing_line_break(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"  s3cret with spaces \r\n")
    assert secretfile.read(str(path), "X_FILE") == "  s3cret with spaces "


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "is empty"),
        (b" \n", "is empty"),
        (b"\xff\xfe", "is not UTF-8"),
        (b"x" * 17, "larger than 16 bytes"),
    ],
)
def test_bad_files_are_refused_naming_the_variable(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(secretfile.SecretFileError, match=f"^X_FILE: .*{says}") as refused:
        secretfile.read(str(path), "X_FILE", bytes_max=16)
    assert "xxxx" not in str(refused.value)  # never the content


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(secretfile.SecretFileError, match="X_FILE: cannot read"):
        secretfile.read(str(tmp_path / "missing"), "X_FILE")
