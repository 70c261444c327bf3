import json
import re
from collections import Counter

import pytest
from conftest import SAMPLE
from helpers import example

from sftjudge.curate.pii import PII_TYPES, luhn_valid, scrub_pii, scrub_text
from sftjudge.curate.rows import ChatMessage, Example
from sftjudge.curate.steps import load_rows


@pytest.mark.parametrize("pii, kind", [
    ("jane.doe+tickets@example.com", "EMAIL"),
    ("ops@mail.example.co.uk", "EMAIL"),
    ("+1 415-555-0134", "PHONE"),
    ("(212) 555-0199", "PHONE"),
    ("415.555.0134", "PHONE"),
    ("+44 20 7946 0958", "PHONE"),
    ("1-800-555-0199", "PHONE"),
    ("4111 1111 1111 1111", "CREDIT_CARD"),
    ("4111-1111-1111-1111", "CREDIT_CARD"),
    ("5555555555554444", "CREDIT_CARD"),
    ("3782 822463 10005", "CREDIT_CARD"),
    ("123-45-6789", "SSN"),
    ("192.168.0.17", "IP_ADDRESS"),
    ("255.255.255.0", "IP_ADDRESS"),
    ("2001:db8::8a2e:370:7334", "IP_ADDRESS"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "IP_ADDRESS"),
    ("fe80::1ff:fe23:4567:890a", "IP_ADDRESS"),
])
def test_each_pii_type_is_masked_with_its_placeholder(pii, kind):
    text, counts = scrub_text(f"Contact: {pii}, thanks.")
    assert text == f"Contact: [{kind}], thanks."
    assert counts == Counter({kind: 1})


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 declined",  # fails Luhn
    "ref 4111111111111121",                 # fails Luhn
    "order #A12345 shipped",
    "order A123456789012 shipped",
    "placed on 2024-01-15 at 10:30",
    "due 01/15/2024",
    "it costs $1,234.56, or 19.99 a month",
    "we have 42 items and 1000 users in 3 regions",
    "SSNs never issued: 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
    "version 1.2.3 and 10.0",
    "not an address: 256.1.1.1 or 1.2.3",
    "timestamps 12:30:45, MAC 00:1a:2b:3c:4d:5e, slice a[1::2], std::vector",
    "account 4155550134 and zip 94103-1234",
    "user: hi\nassistant: hello",
])
def test_lookalikes_are_left_alone(text):
    assert scrub_text(text) == (text, Counter())


def test_detectors_do_not_eat_each_other():
    text, counts = scrub_text("card 4111 1111 1111 1111, mail call.me.4155550134@example.org, "
                              "phones 415-555-0134 415-555-0135, host 10.0.0.1")
    assert text == "card [CREDIT_CARD], mail [EMAIL], phones [PHONE] [PHONE], host [IP_ADDRESS]"
    assert counts == Counter({"CREDIT_CARD": 1, "EMAIL": 1, "PHONE": 2, "IP_ADDRESS": 1})


def test_luhn():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def _row(i: str, user: str, assistant: str = "ok", system: str | None = None) -> Example:
    messages = [ChatMessage(role="system", content=system)] if system is not None else []
    messages += [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=assistant)]
    return Example(id=i, messages=tuple(messages), source=f"mem:{i}")


def test_mask_mode_rewrites_every_message_and_keeps_id_source_and_clean_rows():
    clean = example("clean", prompt="order #A12345 is late")
    dirty = _row("dirty", "reach me at bo@example.net", "I will call (212) 555-0199", system="ssn 123-45-6789")
    result, counts = scrub_pii([clean, dirty], mode="mask")
    assert result.dropped == []
    assert result.kept[0] is clean
    masked = result.kept[1]
    assert (masked.id, masked.source) == ("dirty", "mem:dirty")
    assert [m.content for m in masked.messages] == ["ssn [SSN]", "reach me at [EMAIL]", "I will call [PHONE]"]
    assert [m.role for m in masked.messages] == ["system", "user", "assistant"]
    assert dirty.messages[1].content == "reach me at bo@example.net"  # the input row is untouched
    assert counts == {"EMAIL": 1, "CREDIT_CARD": 0, "SSN": 1, "IP_ADDRESS": 0, "PHONE": 1}


def test_mask_mode_scrubs_string_meta_values_too():
    row = Example(id="m", messages=example("m").messages, source="mem:m",
                  meta={"contact": "ann@example.org", "category": "billing", "priority": 2})
    result, counts = scrub_pii([row])
    assert result.kept[0].meta == {"contact": "[EMAIL]", "category": "billing", "priority": 2}
    assert row.meta["contact"] == "ann@example.org"
    assert counts["EMAIL"] == 1


def test_drop_mode_drops_rows_with_pii_and_names_the_types():
    rows = [example("a", prompt="mail a@example.com or b@example.com"), example("b", prompt="nothing here"),
            example("c", prompt="server 10.1.2.3", completion="card 4111111111111111")]
    result, counts = scrub_pii(rows, mode="drop")
    assert len(result.kept) + len(result.dropped) == len(rows)
    assert [r.id for r in result.kept] == ["b"]
    assert [(d.row.id, d.step, d.reason, d.source) for d in result.dropped] == [
        ("a", "pii", "contains PII", "mem:a"), ("c", "pii", "contains PII", "mem:c")]
    assert result.dropped[0].detail == "found EMAIL x2"
    assert result.dropped[1].detail == "found CREDIT_CARD x1, IP_ADDRESS x1"
    assert counts == {"EMAIL": 2, "CREDIT_CARD": 1, "SSN": 0, "IP_ADDRESS": 1, "PHONE": 0}
    assert json.dumps(result.dropped[0].to_json())  # quarantine rows stay writable


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mask.*drop"):
        scrub_pii([example("a")], mode="redact")


def test_sample_data_planted_emails_and_phones_are_masked_and_nothing_else_changes():
    loaded, _ = load_rows(SAMPLE)
    rows = loaded.kept
    result, counts = scrub_pii(rows)
    changed = {old.id for old, new in zip(rows, result.kept) if old is not new}
    planted_pii = re.compile(r"@example\.(com|org|net)|555[-.]01\d\d")  # the generator's reserved ranges
    planted = {row.id for row in rows if planted_pii.search(row.instruction)}
    assert len(changed) >= 20
    assert changed == planted  # every planted row, and no row whose only numbers are order ids
    assert counts["EMAIL"] > 0 and counts["PHONE"] > 0 and set(counts) == set(PII_TYPES)
    for row in result.kept:
        assert not planted_pii.search(row.instruction)
