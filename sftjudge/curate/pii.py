"""PII scrubbing: find emails, phone numbers, card numbers, US SSNs and IP addresses; mask or drop.

Each PII type is a regex plus, where a regex alone would flag too much, a validator (Luhn for cards, the
stdlib's parser for IPv6, a digit count for international phones). Detectors run in a fixed order so one
type cannot eat another: emails first (their local part may hold digits), then card numbers before SSNs and
IP addresses, and phones last because their loose digit groups would otherwise swallow part of a card.
Replacements are typed placeholders like ``[EMAIL]`` that contain no digits, so later detectors never match
inside them.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from sftjudge.curate.rows import ChatMessage, Example
from sftjudge.curate.steps import Dropped, StepResult

PII_TYPES = ("EMAIL", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)

# 13-19 digits, single spaces or dashes allowed between them. The lookarounds make a match cover a whole
# digit run: a 20-digit number, or two phone numbers side by side, must not yield a 13-digit "card" inside.
_CARD = re.compile(r"(?<![\w-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)(?!\w)")

# Area 000, 666 and 900-999, group 00 and serial 0000 are never issued, so such strings are not SSNs.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")

# A loose shape (2+ colons, hex groups, optional embedded IPv4); `_is_ipv6` decides. Writing every
# compression form as a regex is error-prone; ipaddress already knows them.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])")

_PHONE = re.compile(
    r"(?<![\w+])(?:"
    # International: a leading + and country code, then digit groups (some may be parenthesised).
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\)|[ .-]?\d{1,5}){1,6}"
    r"|"
    # North American: area code and exchange start with 2-9, and the groups must be separated, so plain
    # 10-digit numbers (order numbers, amounts in cents) stay untouched.
    r"(?:1[ .-])?(?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}"
    r")(?!\w|[.-]\d)"
)


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn checksum every payment card number carries.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card(match: str) -> bool:
    return luhn_valid(re.sub(r"[ -]", "", match))


def _is_ipv6(match: str) -> bool:
    """Valid IPv6, and not a shape code often has: ``a[1::2]`` slices, ``x::y`` scopes, ``::1``."""
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    groups = [g for g in re.split(r"::?", match) if g]
    return len(groups) >= 3 or any(len(g) == 4 for g in groups)


def _is_phone(match: str) -> bool:
    # E.164 numbers have at most 15 digits; fewer than 8 is an extension or a short code, not a number.
    return 8 <= sum(c.isdigit() for c in match) <= 15


_DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    ("EMAIL", _EMAIL, None),
    ("CREDIT_CARD", _CARD, _is_card),
    ("SSN", _SSN, None),
    ("IP_ADDRESS", _IPV6, _is_ipv6),
    ("IP_ADDRESS", _IPV4, None),
    ("PHONE", _PHONE, _is_phone),
)


def scrub_text(text: str) -> tuple[str, Counter]:
    """Replace every detected PII span with its typed placeholder; returns (new text, Counter of types).

    Types are EMAIL, CREDIT_CARD (13-19 digits passing Luhn), SSN (dashed, issued ranges only),
    IP_ADDRESS (IPv4 and IPv6) and PHONE (North American or +country formats). Never raises.

    >>> scrub_text("Mail jo@example.com or call (212) 555-0199 about order #A12345 from 2024-01-15.")
    ('Mail [EMAIL] or call [PHONE] about order #A12345 from 2024-01-15.', Counter({'EMAIL': 1, 'PHONE': 1}))
    """
    counts: Counter = Counter()
    for kind, pattern, accept in _DETECTORS:
        def replace(match: re.Match[str], kind: str = kind, accept=accept) -> str:
            if accept is not None and not accept(match.group()):
                return match.group()
            counts[kind] += 1
            return f"[{kind}]"

        text = pattern.sub(replace, text)
    return text, counts


def _describe(found: Counter) -> str:
    """'EMAIL x1, PHONE x2' in PII_TYPES order, for drop details."""
    return ", ".join(f"{kind} x{found[kind]}" for kind in PII_TYPES if found[kind])


def _scrub_row(row: Example) -> tuple[tuple[ChatMessage, ...], dict, Counter]:
    """(scrubbed messages, scrubbed meta, PII found) for one row; unchanged parts are the same objects."""
    found: Counter = Counter()
    messages = []
    for message in row.messages:
        content, counts = scrub_text(message.content)
        found.update(counts)
        messages.append(message if not counts else ChatMessage(role=message.role, content=content))
    meta = dict(row.meta)
    # Meta holds the row's other top-level fields and is written out with it, so a "contact" column would
    # leak what the messages no longer show.
    for key, value in row.meta.items():
        if isinstance(value, str):
            meta[key], counts = scrub_text(value)
            found.update(counts)
    return tuple(messages), meta, found


def scrub_pii(rows: list[Example], *,
              mode: Literal["mask", "drop"] = "mask") -> tuple[StepResult, dict[str, int]]:
    """Mask or drop PII in rows; returns the step result and the number of PII spans found per type.

    In "mask" mode every row is kept, and each message's content (system, user and assistant) and each string
    value in `meta` is replaced by `scrub_text`'s output; rows with PII become new Examples with the same id
    and source, rows without PII are returned as they came. In "drop" mode a row with any PII is dropped with
    reason "contains PII" and a detail listing the types and counts. The counts cover all input rows and
    always hold every type in PII_TYPES. Raises ValueError for another mode.
    """
    if mode not in ("mask", "drop"):
        raise ValueError(f"PII mode must be 'mask' or 'drop', got {mode!r}")
    totals: Counter = Counter()
    result = StepResult([])
    for row in rows:
        messages, meta, found = _scrub_row(row)
        totals.update(found)
        if not found:
            result.kept.append(row)
        elif mode == "mask":
            result.kept.append(row.model_copy(update={"messages": messages, "meta": meta}))
        else:
            result.dropped.append(Dropped("pii", "contains PII", row.source, row, detail=f"found {_describe(found)}"))
    return result, {kind: totals[kind] for kind in PII_TYPES}
