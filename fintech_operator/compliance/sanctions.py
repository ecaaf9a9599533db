"""Sanctions screening against a list in the OFAC SDN CSV layout (pure: no I/O, no clock).

The SDN file (``sdn.csv``) has no header; each row is ``ent_num, SDN_Name, SDN_Type, Program,
Title, Call_Sign, Vess_type, Tonnage, GRT, Vess_flag, Vess_owner, Remarks`` with ``-0-`` for an
empty field. Individuals are written ``LAST, First``.

Speed (a list of 20,000 names must screen in milliseconds, see ``bench/bench_screening.py``):

- Everything about the list is done once, when it is loaded (:meth:`Screener.build`): names are
  normalized (accents folded, punctuation dropped, upper case), ``LAST, First`` also gets the
  ``FIRST LAST`` order, every name also gets its token-sorted form, and exact forms go into a
  dict. Choices are kept sorted by length.
- Per screening, an exact match is one dict lookup. The fuzzy pass compares the name with the
  written forms and its sorted tokens with the sorted forms (not every pair), and only names
  whose length *can* reach the threshold: Jaro-Winkler is at most ``0.6 * Jaro + 0.4`` and Jaro
  is at most ``(2 + shorter/longer) / 3``, so a threshold T needs ``shorter/longer >= 5T - 4``.
  That window is found by bisection and handed to rapidfuzz's C implementation with a score
  cutoff and a small result limit, so Python only ever handles a handful of candidates.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import csv
import gzip
import io
import math
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from rapidfuzz import process
from rapidfuzz.distance import JaroWinkler

# Limits (house rule 5): a list is refused rather than allowed to exhaust the operator's memory.
LIST_BYTES_MAX: Final = 32 * 1024 * 1024  # Decompressed CSV text.
ENTRIES_MAX: Final = 200_000
NAME_LENGTH_MAX: Final = 512  # Raw SDN_Name; entity names can be long.
QUERY_LENGTH_MAX: Final = 256  # A holder's name (the Card API allows 256).
HITS_MAX: Final = 10
BPS: Final = 10_000
EMPTY: Final = "-0-"
# The SDN_Name column; the ent_num column is 0, SDN_Type 2 and Program 3.
_NAME_COLUMN: Final = 1


class ListError(ValueError):
    """The list cannot be used: malformed, too large or empty. The message says where and why."""


class InvalidName(ValueError):
    """A name that normalizes to nothing (only punctuation), so it cannot be screened."""


@dataclass(frozen=True)
class Entry:
    """One row of the list, as written there."""

    entry_id: str | None
    name: str
    sdn_type: str | None
    program: str | None


@dataclass(frozen=True)
class Hit:
    """An entry the screened name resembles: similarity in basis points, exact or not."""

    entry: Entry
    score_bps: int
    exact: bool
    compared: str  # The normalized form of the entry that matched best.


@dataclass(frozen=True)
class Result:
    """Outcome of one screening: the exact hit if any, and fuzzy hits best first."""

    query: str  # Normalized name screened.
    threshold_bps: int
    exact: Hit | None
    hits: tuple[Hit, ...]

    @property
    def best(self) -> Hit | None:
        return self.exact or (self.hits[0] if self.hits else None)


def normalize(name: str) -> str:
    """Upper case, accents folded to ASCII letters, everything else but letters and digits a space.

    ``"  Müller-Lüdenscheidt, José "`` becomes ``"MULLER LUDENSCHEIDT JOSE"``.
    """
    if not isinstance(name, str):
        raise TypeError("a name must be a str")
    decomposed = unicodedata.normalize("NFKD", name)
    kept = [
        char if char.isalnum() else " " for char in decomposed if not unicodedata.combining(char)
    ]
    return " ".join("".join(kept).upper().split())


def token_sorted(normalized: str) -> str:
    """Tokens in alphabetical order, so ``JOHN SMITH`` and ``SMITH JOHN`` compare equal."""
    return " ".join(sorted(normalized.split()))


def name_forms(raw: str) -> tuple[str, ...]:
    """Normalized forms of a listed name: as written, ``FIRST LAST`` for ``LAST, First``."""
    forms = [normalize(raw)]
    if raw.count(",") == 1:
        last, first = raw.split(",")
        forms.append(normalize(f"{first} {last}"))
    return tuple(dict.fromkeys(form for form in forms if form))


# --- Parsing --------------------------------------------------------------------------------------


def decode_configmap_value(
    data: Mapping[str, str] | None, binary_data: Mapping[str, str] | None, key: str
) -> str:
    """The list text under ``key``: plain text in ``data``, or gzip in ``binaryData`` (``.gz``).

    ``binaryData`` values are base64, as the API server returns them.
    """
    if key.endswith(".gz"):
        encoded = (binary_data or {}).get(key)
        if encoded is None:
            raise ListError(f"binaryData has no key {key!r}")
        try:
            compressed = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ListError(f"binaryData[{key!r}] is not base64: {exc}") from exc
        return _gunzip(compressed, key)
    text = (data or {}).get(key)
    if text is None:
        raise ListError(f"data has no key {key!r}")
    if len(text.encode()) > LIST_BYTES_MAX:
        raise ListError(f"data[{key!r}] is larger than {LIST_BYTES_MAX} bytes")
    return text


def _gunzip(compressed: bytes, key: str) -> str:
    # Read at most one byte past the limit, so a gzip bomb is refused without inflating it.
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            raw = stream.read(LIST_BYTES_MAX + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ListError(f"binaryData[{key!r}] is not gzip: {exc}") from exc
    if len(raw) > LIST_BYTES_MAX:
        raise ListError(f"binaryData[{key!r}] inflates to more than {LIST_BYTES_MAX} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListError(f"binaryData[{key!r}] is not UTF-8: {exc}") from exc


def parse_sdn_csv(text: str, *, entries_max: int = ENTRIES_MAX) -> tuple[Entry, ...]:
    """Parse rows in the SDN layout; refuse the whole list at the first bad row, naming its line.

    Blank lines and the trailing end-of-file character (``\\x1a``) some downloads carry are
    skipped. A header row (``ent_num,SDN_Name,...``) is allowed and skipped.
    """
    if not isinstance(text, str):
        raise ListError("the list must be text")
    if len(text) > LIST_BYTES_MAX:
        raise ListError(f"the list is larger than {LIST_BYTES_MAX} characters")
    entries: list[Entry] = []
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        for row in reader:
            entry = _entry(row, reader.line_num)
            if entry is None:
                continue
            if len(entries) >= entries_max:
                raise ListError(f"the list has more than {entries_max} entries")
            entries.append(entry)
    except csv.Error as exc:
        raise ListError(f"line {reader.line_num}: not CSV: {exc}") from exc
    if not entries:
        raise ListError("the list has no entries")
    return tuple(entries)


def _entry(row: Sequence[str], line: int) -> Entry | None:
    cells = [cell.strip() for cell in row]
    if not any(cell.strip("\x1a") for cell in cells):
        return None
    if line == 1 and cells[0].lower() == "ent_num":
        return None
    if len(cells) <= _NAME_COLUMN:
        raise ListError(f"line {line}: expected ent_num,SDN_Name,... got {len(cells)} column(s)")
    name = _cell(cells[_NAME_COLUMN])
    if name is None:
        raise ListError(f"line {line}: SDN_Name is empty")
    if len(name) > NAME_LENGTH_MAX:
        raise ListError(f"line {line}: SDN_Name is longer than {NAME_LENGTH_MAX} characters")
    if not name_forms(name):
        raise ListError(f"line {line}: SDN_Name {name!r} has no letters or digits")
    entry_id = _cell(cells[0])
    sdn_type = _cell(cells[2]) if len(cells) > 2 else None
    program = _cell(cells[3]) if len(cells) > 3 else None
    return Entry(
        entry_id=entry_id[:32] if entry_id else None,
        name=name,
        sdn_type=sdn_type[:64] if sdn_type else None,
        program=program[:256] if program else None,
    )


def _cell(value: str) -> str | None:
    return None if value in ("", EMPTY) else value


# --- Screening ------------------------------------------------------------------------------------


def length_ratio_min(threshold_bps: int) -> float:
    """Smallest shorter/longer length ratio for which Jaro-Winkler can reach the threshold."""
    return max(0.0, 5 * threshold_bps / BPS - 4)


class _Choices:
    """Names to compare against, sorted by length, each with the index of its entry."""

    def __init__(self, forms: Iterable[tuple[str, int]]) -> None:
        ordered = sorted(set(forms), key=lambda form: (len(form[0]), form[0], form[1]))
        self.names: list[str] = [form for form, _ in ordered]
        self.owners: list[int] = [owner for _, owner in ordered]
        self.lengths: list[int] = [len(form) for form in self.names]
        self.forms_per_owner_max = max(Counter(self.owners).values(), default=1)

    def candidates(
        self, probe: str, threshold_bps: int, owners: int
    ) -> list[tuple[str, float, int]]:
        """The best choices at or near the threshold, enough of them to cover ``owners`` entries.

        Only names whose length can reach the threshold are compared (see the module doc).
        """
        ratio = length_ratio_min(threshold_bps)
        length = len(probe)
        low = math.ceil(length * ratio) if ratio > 0 else 0
        high = math.floor(length / ratio) if ratio > 0 else max(self.lengths, default=0)
        start = bisect.bisect_left(self.lengths, low)
        end = bisect.bisect_right(self.lengths, high)
        if start >= end:
            return []
        # A hair under the threshold: the basis-point rounding of the caller makes the final call.
        cutoff = max(0.0, threshold_bps / BPS - 0.5 / BPS)
        found = process.extract(
            probe,
            self.names[start:end],
            scorer=JaroWinkler.normalized_similarity,
            score_cutoff=cutoff,
            # The top few suffice: an entry has at most forms_per_owner_max names here, so these
            # cover the best ``owners`` entries whatever their other names score.
            limit=owners * self.forms_per_owner_max,
        )
        return [
            (choice, float(score), self.owners[start + index]) for choice, score, index in found
        ]


class Screener:
    """A compiled list: build once per list version, screen many names.

    A name's similarity to an entry is the best Jaro-Winkler score of the name against the
    entry's written forms, or of the name's tokens sorted against the entry's tokens sorted (so
    word order does not matter); an exact match is equality of either.
    """

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries: tuple[Entry, ...] = tuple(entries)
        if not self.entries:
            raise ListError("the list has no entries")
        written = [
            (form, owner)
            for owner, entry in enumerate(self.entries)
            for form in name_forms(entry.name)
        ]
        self._written = _Choices(written)
        self._sorted = _Choices((token_sorted(form), owner) for form, owner in written)
        self._exact: dict[str, int] = {}
        for form, owner in written:
            self._exact.setdefault(form, owner)
        for form, owner in written:
            self._exact.setdefault(token_sorted(form), owner)

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> Screener:
        return cls(tuple(entries))

    @property
    def size(self) -> int:
        """Names compared against (every form of every entry, written and token-sorted)."""
        return len(self._written.names) + len(self._sorted.names)

    def screen(self, name: str, threshold_bps: int, *, limit: int = 5) -> Result:
        """Screen one name: the exact hit, and fuzzy hits at or above ``threshold_bps``."""
        if type(threshold_bps) is not int or not 0 < threshold_bps <= BPS:
            raise ValueError(f"threshold_bps must be an int in 1..{BPS}")
        if type(limit) is not int or not 1 <= limit <= HITS_MAX:
            raise ValueError(f"limit must be an int in 1..{HITS_MAX}")
        if not isinstance(name, str) or len(name) > QUERY_LENGTH_MAX:
            raise InvalidName(f"a name must be a str of at most {QUERY_LENGTH_MAX} characters")
        query = normalize(name)
        if not query:
            raise InvalidName(f"name {name!r} has no letters or digits to screen")
        exact_owner = self._exact.get(query)
        if exact_owner is None:
            exact_owner = self._exact.get(token_sorted(query))
        exact = None
        if exact_owner is not None:
            exact = Hit(self.entries[exact_owner], BPS, True, query)
        hits = self._fuzzy(query, threshold_bps, limit, exact_owner)
        return Result(query=query, threshold_bps=threshold_bps, exact=exact, hits=hits)

    def _fuzzy(
        self, query: str, threshold_bps: int, limit: int, skip: int | None
    ) -> tuple[Hit, ...]:
        best: dict[int, tuple[int, str]] = {}
        # One more entry than asked for, in case the exact entry is among them and is skipped.
        wanted = limit + 1
        found = [
            *self._written.candidates(query, threshold_bps, wanted),
            *self._sorted.candidates(token_sorted(query), threshold_bps, wanted),
        ]
        for choice, score, owner in found:
            score_bps = min(BPS, round(score * BPS))
            if score_bps >= threshold_bps and score_bps > best.get(owner, (-1, ""))[0]:
                best[owner] = (score_bps, choice)
        ranked = sorted(
            (item for item in best.items() if item[0] != skip),
            key=lambda item: (-item[1][0], self.entries[item[0]].name),
        )
        return tuple(
            Hit(self.entries[owner], score_bps, False, choice)
            for owner, (score_bps, choice) in ranked[:limit]
        )
