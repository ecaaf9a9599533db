"""docs/configuration.md is rendered from the settings models and kept in step by --check."""

from __future__ import annotations

from pathlib import Path

from fintech_operator import config, settings_reference


def test_the_committed_page_matches_the_models() -> None:
    assert settings_reference.main(["--check"]) == 0


def test_every_variable_is_on_the_page_with_its_default_and_unit() -> None:
    page = settings_reference.render()
    for field in config.fields():
        assert f"| `{field.env}` | `{field.path}` |" in page, field.env
    assert "| `FINTECH_RELAY_BATCH_SIZE` | `relay.batch_max` | int (1 to 10000) | `5000` |" in page
    assert (
        "| `FINTECH_DB_TIMEOUT_SECONDS` | `database.timeout_seconds` | float (> 0, at most 300)"
        in page
    )
    assert "| `DATABASE_URL` | `database.url` | str | required |" in page
    assert "| `FINTECH_KAFKA_SASL_PASSWORD` | `kafka.sasl_password` | secret | empty |" in page
    assert (
        "`FINTECH_GATEWAY_DEADLINE_MS` | `gateway.deadline_ms` | int (50 to 30000) | `1500` | "
        "milliseconds |" in page
    )


def test_check_fails_on_a_drifted_page_and_writing_fixes_it(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text("# stale\n", encoding="utf-8")
    assert settings_reference.main(["--check", str(page)]) == 1
    assert settings_reference.main(["--check", str(tmp_path / "missing.md")]) == 1
    assert settings_reference.main([str(page)]) == 0
    assert settings_reference.main(["--check", str(page)]) == 0
