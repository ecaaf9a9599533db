"""Sanctions screening: SDN CSV parsing, normalization, exact and fuzzy matching (pure)."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from rapidfuzz.distance import JaroWinkler

from fintech_operator import api
from fintech_operator.compliance import model, rules, sanctions

SDN = """\
36,"AL-QAIDA",-0- ,"SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,"a.k.a. ..."
90001,"PETROV, Ivan Demo","individual","DEMO-SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0-
90002,"MÜLLER, José","individual","DEMO-IRAN",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0-
90003,"OCEANIC SHELL TRADING LLC",-0- ,"DEMO-IRAN",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0-
\x1a
"""


@pytest.fixture(scope="module")
def screener() -> sanctions.Screener:
    return sanctions.Screener.build(sanctions.parse_sdn_csv(SDN))


# --- Normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  Müller-Lüdenscheidt, José ", "MULLER LUDENSCHEIDT JOSE"),
        ("AL-QAIDA", "AL QAIDA"),
        ("o'brien   SEAN", "O BRIEN SEAN"),
        ("Ivan\tDemo\nPetrov", "IVAN DEMO PETROV"),
        # A Roman numeral and fullwidth letters fold to plain ASCII.
        ("\u216b \uff26\uff55\uff4c\uff4cwidth", "XII FULLWIDTH"),
        ("---", ""),
    ],
)
def test_normalize(raw: str, normalized: str) -> None:
    """Accents fold to ASCII, punctuation becomes space, case and spacing are uniform."""
    assert sanctions.normalize(raw) == normalized


def test_normalize_refuses_non_text() -> None:
    """Bytes or None are a caller bug, not an empty name."""
    with pytest.raises(TypeError):
        sanctions.normalize(b"name")  # type: ignore[arg-type]


def test_name_forms_add_first_last_order() -> None:
    """``LAST, First`` is also compared as ``FIRST LAST``; other names keep their one form."""
    assert sanctions.name_forms("PETROV, Ivan Demo") == ("PETROV IVAN DEMO", "IVAN DEMO PETROV")
    assert sanctions.name_forms("OCEANIC SHELL TRADING LLC") == ("OCEANIC SHELL TRADING LLC",)
    assert sanctions.token_sorted("SMITH JOHN") == "JOHN SMITH"


# --- Parsing --------------------------------------------------------------------------------------


def test_parse_sdn_layout() -> None:
    """Rows keep id, name, type and program; -0- is empty; the EOF marker is skipped."""
    entries = sanctions.parse_sdn_csv(SDN)
    assert [entry.entry_id for entry in entries] == ["36", "90001", "90002", "90003"]
    assert entries[0] == sanctions.Entry("36", "AL-QAIDA", None, "SDGT")
    assert entries[1].sdn_type == "individual"


def test_parse_skips_header_and_blank_lines() -> None:
    """A header row and blank lines are not entries; two columns are enough."""
    text = 'ent_num,SDN_Name,SDN_Type\n\n7,"DOE, Jane"\n'
    assert sanctions.parse_sdn_csv(text) == (sanctions.Entry("7", "DOE, Jane", None, None),)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no entries"),
        ("\n\n", "no entries"),
        ("12\n", "line 1: expected ent_num,SDN_Name"),
        ('1,"A"\n2,-0-\n', "line 2: SDN_Name is empty"),
        ('1,""\n', "line 1: SDN_Name is empty"),
        ('1,"---"\n', "no letters or digits"),
        (f'1,"{"A" * 513}"\n', "longer than 512"),
        ('1,"unterminated\n', "not CSV"),
    ],
)
def test_parse_refuses_bad_lists_naming_the_line(text: str, needle: str) -> None:
    """A malformed list is refused whole, with the line and the problem named."""
    with pytest.raises(sanctions.ListError, match=needle):
        sanctions.parse_sdn_csv(text)


def test_parse_limits_entries_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list above the entry or byte limit is refused rather than loaded."""
    with pytest.raises(sanctions.ListError, match="more than 2 entries"):
        sanctions.parse_sdn_csv('1,"A"\n2,"B"\n3,"C"\n', entries_max=2)
    monkeypatch.setattr(sanctions, "LIST_BYTES_MAX", 10)
    with pytest.raises(sanctions.ListError, match="larger than 10"):
        sanctions.parse_sdn_csv('1,"ABCDEFGHIJK"\n')
    with pytest.raises(sanctions.ListError, match="must be text"):
        sanctions.parse_sdn_csv(b"1,A")  # type: ignore[arg-type]


def _gz(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode())).decode()


def test_configmap_values_plain_and_gzip() -> None:
    """``data`` holds plain text; a key ending in .gz is base64 gzip in ``binaryData``."""
    assert sanctions.decode_configmap_value({"sdn.csv": SDN}, None, "sdn.csv") == SDN
    assert sanctions.decode_configmap_value(None, {"sdn.csv.gz": _gz(SDN)}, "sdn.csv.gz") == SDN


@pytest.mark.parametrize(
    ("data", "binary", "key", "needle"),
    [
        ({}, None, "sdn.csv", "data has no key"),
        ({"sdn.csv": SDN}, None, "sdn.csv.gz", "binaryData has no key"),
        (None, {"l.gz": "not base64!"}, "l.gz", "not base64"),
        (None, {"l.gz": base64.b64encode(b"plain").decode()}, "l.gz", "not gzip"),
        (None, {"l.gz": base64.b64encode(gzip.compress(b"\xff\xfe")).decode()}, "l.gz", "UTF-8"),
    ],
)
def test_configmap_values_refused(
    data: dict[str, str] | None, binary: dict[str, str] | None, key: str, needle: str
) -> None:
    """A missing key, bad base64, non-gzip or non-UTF-8 content is a clear ListError."""
    with pytest.raises(sanctions.ListError, match=needle):
        sanctions.decode_configmap_value(data, binary, key)


def test_gzip_bomb_is_refused_without_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompression stops one byte past the limit."""
    monkeypatch.setattr(sanctions, "LIST_BYTES_MAX", 1000)
    bomb = base64.b64encode(gzip.compress(b"A" * 10_000_000)).decode()
    with pytest.raises(sanctions.ListError, match="inflates to more than 1000"):
        sanctions.decode_configmap_value(None, {"l.gz": bomb}, "l.gz")


# --- Screening ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Ivan Demo Petrov",
        "PETROV, Ivan Demo",
        "petrov ivan demo",
        "Demo Petrov Ivan",
        "Ivan-Demo Petrov",
    ],
)
def test_exact_match_in_any_order_and_spelling(screener: sanctions.Screener, name: str) -> None:
    """The same tokens in any order, case or punctuation are an exact match."""
    result = screener.screen(name, 9000)
    assert result.exact is not None
    assert result.exact.entry.entry_id == "90001"
    assert result.exact.score_bps == 10_000
    assert all(hit.entry.entry_id != "90001" for hit in result.hits)


def test_accents_fold_to_an_exact_match(screener: sanctions.Screener) -> None:
    """José Müller is listed as MÜLLER, José: exact despite accents and order."""
    result = screener.screen("Jose Muller", 9000)
    assert result.exact is not None
    assert result.exact.entry.entry_id == "90002"


def test_fuzzy_match_above_threshold(screener: sanctions.Screener) -> None:
    """A one-letter variant is a possible match with its Jaro-Winkler score."""
    result = screener.screen("Ivan Demo Petrow", 9000)
    assert result.exact is None
    assert [hit.entry.entry_id for hit in result.hits] == ["90001"]
    expected = round(
        JaroWinkler.normalized_similarity("IVAN DEMO PETROW", "IVAN DEMO PETROV") * 10_000
    )
    assert result.hits[0].score_bps == expected
    assert result.best is result.hits[0]


def test_below_threshold_is_no_match(screener: sanctions.Screener) -> None:
    """Unrelated names, and a variant below a strict threshold, do not match."""
    assert screener.screen("Demo User", 9000).best is None
    assert screener.screen("Ivan Demo Petrow", 9900).best is None


def test_hits_are_ranked_and_limited() -> None:
    """Best score first, at most ``limit`` hits, one per entry."""
    entries = [sanctions.Entry(str(i), f"SMITH, Jon{'n' * i}", None, None) for i in range(1, 6)]
    screener = sanctions.Screener.build(entries)
    result = screener.screen("Jon Smith", 8000, limit=3)
    assert len(result.hits) == 3
    scores = [hit.score_bps for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert len({hit.entry.entry_id for hit in result.hits}) == 3


@pytest.mark.parametrize(
    ("name", "threshold", "limit", "error"),
    [
        ("---", 9000, 5, sanctions.InvalidName),
        ("A" * 257, 9000, 5, sanctions.InvalidName),
        (None, 9000, 5, sanctions.InvalidName),
        ("Jon", 0, 5, ValueError),
        ("Jon", 10_001, 5, ValueError),
        ("Jon", 0.9, 5, ValueError),
        ("Jon", 9000, 0, ValueError),
        ("Jon", 9000, 11, ValueError),
    ],
)
def test_screen_refuses_bad_input(
    screener: sanctions.Screener, name: Any, threshold: Any, limit: int, error: type[Exception]
) -> None:
    """Unscreenable names and out-of-range thresholds or limits are refused, not guessed."""
    with pytest.raises(error):
        screener.screen(name, threshold, limit=limit)


def test_empty_list_is_refused() -> None:
    """A screener without names would clear everybody: refused."""
    with pytest.raises(sanctions.ListError):
        sanctions.Screener.build([])


def test_length_ratio_bound() -> None:
    """Threshold 0.9 needs names within a factor 2 of each other; 0.8 prunes nothing."""
    assert sanctions.length_ratio_min(9000) == pytest.approx(0.5)
    assert sanctions.length_ratio_min(8000) == 0.0


NAMES = st.text(alphabet="ABCDEFGHIJKLMNOP ", min_size=1, max_size=24).filter(str.strip)


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    listed=st.lists(NAMES, min_size=1, max_size=30),
    query=NAMES,
    threshold=st.integers(8000, 10_000),
)
def test_prefilter_loses_no_match(listed: list[str], query: str, threshold: int) -> None:
    """The prefilter and result limit are sound: the entries of a brute-force comparison match."""
    entries = [sanctions.Entry(str(i), name, None, None) for i, name in enumerate(listed)]
    screener = sanctions.Screener.build(entries)
    result = screener.screen(query, threshold, limit=10)
    normalized = sanctions.normalize(query)
    expected = set()
    for i, name in enumerate(listed):
        written = sanctions.name_forms(name)
        best = max(
            round(JaroWinkler.normalized_similarity(a, b) * 10_000)
            for a, b in [(normalized, form) for form in written]
            + [
                (sanctions.token_sorted(normalized), sanctions.token_sorted(form))
                for form in written
            ]
        )
        if best >= threshold:
            expected.add(str(i))
    found = {hit.entry.entry_id for hit in result.hits}
    if result.exact is not None:
        found.add(result.exact.entry.entry_id)
    # Everything reported matches; when no more than the hit limit match, all of them are found.
    assert found <= expected
    if len(expected) <= 10:
        assert found == expected


# --- Outcomes of the checks -----------------------------------------------------------------------


def policy(**spec: Any) -> model.Policy:
    return model.Policy(
        spec=api.CompliancePolicySpec.model_validate(spec), namespace="ns", name="c"
    )


@pytest.mark.parametrize(
    ("allow_review", "status", "outcome", "reason"),
    [
        (False, "Accepted", model.Outcome.CLEAR, "KycAccepted"),
        (True, "Accepted", model.Outcome.CLEAR, "KycAccepted"),
        (False, "Pending", model.Outcome.REJECT, "KycNotAccepted"),
        (True, "Pending", model.Outcome.REVIEW, "KycPending"),
        (False, "Rejected", model.Outcome.REJECT, "KycRejected"),
        (True, "Rejected", model.Outcome.REJECT, "KycRejected"),
    ],
)
def test_kyc_gate(allow_review: bool, status: str, outcome: model.Outcome, reason: str) -> None:
    """Only Accepted clears; Pending reviews only when allowed; Rejected always rejects."""
    check = rules.check_kyc(policy(kyc={"allowReview": allow_review}), status)
    assert (check.outcome, check.reason) == (outcome, reason)
    assert check.inputs == {"kycStatus": status, "allowReview": allow_review}


def test_kyc_default_policy_and_unknown_status() -> None:
    """The default policy does not allow review; an unknown status is a caller bug."""
    assert rules.check_kyc(model.DEFAULT_POLICY, "Pending").outcome is model.Outcome.REJECT
    with pytest.raises(model.InvalidFacts):
        rules.check_kyc(model.DEFAULT_POLICY, "Maybe")


@pytest.mark.parametrize(
    ("name", "outcome", "reason"),
    [
        ("Demo User", model.Outcome.CLEAR, "NoMatch"),
        ("Ivan Demo Petrow", model.Outcome.REVIEW, "PossibleMatch"),
        ("Ivan Demo Petrov", model.Outcome.REJECT, "ExactMatch"),
        ("!!!", model.Outcome.REVIEW, "UnscreenableName"),
    ],
)
def test_sanctions_outcomes(
    screener: sanctions.Screener, name: str, outcome: model.Outcome, reason: str
) -> None:
    """No match clears, a possible match reviews, an exact match rejects, garbage reviews."""
    check = rules.check_sanctions(screener, name, 9000, "configmap ns/sdn[sdn.csv]")
    assert (check.kind, check.outcome, check.reason) == (model.CheckKind.SANCTIONS, outcome, reason)
    assert check.inputs["name"] == name
    if outcome is not model.Outcome.CLEAR and reason != "UnscreenableName":
        assert check.hit is not None
        assert check.hit.entry_id == "90001"
        assert "PETROV, Ivan Demo" in check.detail


def test_sanctions_not_configured_and_unavailable() -> None:
    """No list clears (and says so); an unreadable list fails closed to Review."""
    assert rules.sanctions_not_configured().outcome is model.Outcome.CLEAR
    unavailable = rules.sanctions_unavailable("configmap gone", "configmap ns/x[y]")
    assert (unavailable.outcome, unavailable.reason) == (
        model.Outcome.REVIEW,
        "ScreeningUnavailable",
    )


def test_worst_result_wins() -> None:
    """Reject beats Review beats Alert beats Clear; the first of equals is kept."""
    clear = rules.check_kyc(model.DEFAULT_POLICY, "Accepted")
    review = rules.sanctions_unavailable("x", "y")
    reject = rules.check_kyc(model.DEFAULT_POLICY, "Rejected")
    assert model.worst([clear, review, reject]) is reject
    assert model.worst([clear, review]) is review
    assert model.worst([]) is None
    with pytest.raises(model.InvalidFacts):
        model.CheckResult(model.CheckKind.KYC, model.Outcome.CLEAR, "not camel case", "d")
