"""Generate the seeded synthetic support-ticket sample dataset for sftjudge.

The task: turn a short customer-support message into a fixed JSON shape
``{"intent", "product", "priority", "order_id"}``. Priority follows simple,
learnable cue words (urgent/asap/immediately/can't work -> high; no rush/when
you get a chance/feature requests -> low; otherwise medium).

Besides the clean rows, the file deliberately contains realistic mess so that
data-cleaning code has something to find: exact duplicates, near-duplicates,
rows with (fake) PII, and malformed lines. Everything is driven by a single
``random.Random(seed)``, so two runs with the same arguments are byte-identical.

Usage:
    python3 scripts/make_sample_data.py [--seed 7] [--rows 400] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data" / "sample" / "support_tickets.jsonl"
PROMPT_PREFIX = "Extract the support ticket fields as JSON.\n\nMessage: "

N_EXACT_DUPS = 12
N_NEAR_DUPS = 12
N_PII = 25
MIN_WORDS, MAX_WORDS = 10, 40

PRODUCTS = ["mobile app", "web dashboard", "smart speaker", "fitness band", "router"]
PHYSICAL_PRODUCTS = ["smart speaker", "fitness band", "router"]  # the only things we ship

BODIES = {
    "refund": [
        "I would like a refund for my {product}{ref}.",
        "Can I get my money back for the {product}{ref}?",
        "The {product} I bought{ref} is not what I expected, so I want to return it for a refund.",
        "Please refund the {product}{ref}, I am not happy with it.",
        "I returned the {product}{ref} two weeks ago and still have not received my refund.",
        "How do I request a refund for the {product}{ref}?",
        "I want to cancel and get refunded for the {product}{ref}.",
    ],
    "bug_report": [
        "My {product}{ref} keeps crashing when I open the settings page.",
        "The {product}{ref} freezes every time I try to sync my data.",
        "There is a bug in the {product}{ref}, the screen goes blank after the latest update.",
        "Since the last update my {product}{ref} shows an error code and restarts by itself.",
        "The {product}{ref} is showing the wrong numbers on the main screen.",
        "Buttons in the {product}{ref} stopped responding after today's update.",
    ],
    "account_access": [
        "I can't log in to the {product}{ref}, it says my password is wrong.",
        "My account on the {product}{ref} got locked after a few login attempts.",
        "The password reset email for the {product}{ref} never arrives.",
        "I am unable to sign in to my {product}{ref} account since yesterday.",
        "Two-factor codes for the {product}{ref} are not being accepted.",
        "I got logged out of the {product}{ref} and now it does not recognize my email.",
    ],
    "shipping": [
        "My {product}{ref} has not arrived yet and tracking has not updated in a week.",
        "Where is my {product}{ref}, it was supposed to be delivered on Monday?",
        "The {product}{ref} was delivered to the wrong address.",
        "The box for my {product}{ref} arrived damaged in shipping.",
        "Can you tell me when the {product}{ref} will ship?",
        "Tracking says my {product}{ref} was delivered but nothing is at my door.",
    ],
    "billing": [
        "I was charged twice for the {product}{ref}.",
        "My card was billed for the {product}{ref} subscription after I cancelled.",
        "The invoice for my {product}{ref} shows the wrong amount.",
        "Why did the price of my {product}{ref} plan go up this month?",
        "I see an unknown charge on my statement related to the {product}{ref}.",
        "Please update the billing address on my {product}{ref} account.",
    ],
    "feature_request": [
        "It would be great if the {product} supported dark mode.",
        "Could you add an option to export data from the {product}?",
        "Please consider adding a family sharing feature to the {product}.",
        "I would love to see more language options in the {product}.",
        "Any plans to let the {product} work with other smart home devices?",
        "A weekly summary report in the {product} would be really useful.",
    ],
}
INTENTS = list(BODIES)
ORDER_PROB = {"refund": 0.75, "shipping": 0.75, "billing": 0.7,
              "bug_report": 0.15, "account_access": 0.1, "feature_request": 0.0}
REF_FORMATS = [" (order #{oid})", " from order #{oid}", " on order #{oid}", " (#{oid})"]

OPENERS = ["", "", "Hi,", "Hello,", "Hello team,", "Hey there,", "Good morning,",
           "Hi support,", "Dear support team,"]
TAILS = {
    "high": ["Please help asap!", "This is urgent.", "I need this fixed immediately.",
             "I can't work until this is sorted.", "Urgent, please respond today.",
             "Please look at this immediately, I can't work."],
    "low": ["No rush, just whenever you get a chance.", "Whenever you get a chance, thanks.",
            "No rush on this.", "Take a look when you get a chance."],
    "medium": ["", "Thanks.", "Thank you!", "Thanks in advance.", "Appreciate the help.",
               "Any help is appreciated.", "Please help."],
}
PII_TAILS = {
    "high": ["Please help asap, you can reach me at {pii}.",
             "This is urgent, call or email me at {pii}.",
             "I can't work like this, reach me at {pii} immediately."],
    "low": ["No rush, you can reach me at {pii}.", "Reply to {pii} when you get a chance."],
    "medium": ["You can reach me at {pii}.", "My contact is {pii}.",
               "Feel free to contact me at {pii}."],
}
HIGH_CUES = ("urgent", "asap", "immediately", "can't work")
LOW_CUES = ("no rush", "when you get a chance", "whenever")

FIRST_NAMES = ["jane", "john", "maria", "li", "omar", "sara", "tom", "aisha", "pedro", "kim"]
LAST_NAMES = ["doe", "smith", "garcia", "chen", "khan", "novak", "brown", "silva"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net"]
AREA_CODES = ["415", "212", "312", "646", "206", "617"]

SYNONYMS = {"bought": "purchased", "wrong": "incorrect", "charged": "billed",
            "unable": "not able", "delivered": "dropped off", "add": "include",
            "love": "like", "useful": "helpful", "damaged": "broken", "Hi": "Hey",
            "Hello": "Hi", "Thanks": "Thank you", "great": "nice", "weeks": "wks",
            "update": "upgrade", "arrived": "come", "Please": "Pls"}


def detect_priority(intent: str, message: str) -> str:
    """Return the priority implied by cue words in the message (the labelling rule)."""
    if intent == "feature_request":
        return "low"
    text = " ".join(message.lower().split())
    if any(cue in text for cue in HIGH_CUES):
        return "high"
    if any(cue in text for cue in LOW_CUES):
        return "low"
    return "medium"


def make_pii(rng: random.Random) -> str:
    """Fake contact details from reserved ranges (example.* domains, 555-01xx numbers)."""
    email = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{rng.randint(1, 99)}@{rng.choice(EMAIL_DOMAINS)}"
    area, line = rng.choice(AREA_CODES), f"01{rng.randint(0, 99):02d}"
    phone = rng.choice([f"+1 {area}-555-{line}", f"({area}) 555-{line}", f"{area}.555.{line}"])
    kind = rng.random()
    if kind < 0.45:
        return email
    if kind < 0.8:
        return phone
    return f"{email} or {phone}"


def join_message(opener: str, body: str, tail: str) -> str:
    """Glue opener, body sentence and tail sentence into one message."""
    if opener and not (body.startswith("I ") or body.startswith("I'")):
        body = body[0].lower() + body[1:]
    return " ".join(part for part in (opener, body, tail) if part)


def make_ticket(rng: random.Random, with_pii: bool) -> tuple[str, dict]:
    """Draw one (message, label) pair; labels are derived from what the message says."""
    while True:
        intent = rng.choice(INTENTS)
        product = rng.choice(PHYSICAL_PRODUCTS if intent == "shipping" else PRODUCTS)
        order_id = None
        if rng.random() < ORDER_PROB[intent]:
            order_id = f"{rng.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ')}{rng.randint(0, 99999):05d}"
        ref = rng.choice(REF_FORMATS).format(oid=order_id) if order_id else ""
        body = rng.choice(BODIES[intent]).format(product=product, ref=ref)
        if intent == "feature_request":
            tier = rng.choice(["low", "medium"])
        else:
            tier = rng.choices(["high", "medium", "low"], weights=[3, 5, 2])[0]
        if with_pii:
            tail = rng.choice(PII_TAILS[tier]).format(pii=make_pii(rng))
        else:
            tail = rng.choice(TAILS[tier])
        message = join_message(rng.choice(OPENERS), body, tail)
        if MIN_WORDS <= len(message.split()) <= MAX_WORDS:
            break
    priority = detect_priority(intent, message)
    assert intent == "feature_request" or priority == tier, (message, tier)
    label = {"intent": intent, "product": product, "priority": priority, "order_id": order_id}
    return message, label


def make_row(row_id: int, message: str, label: dict) -> dict:
    """Build a well-formed training row with the fixed prompt and compact JSON completion."""
    return {"id": f"t{row_id:04d}", "prompt": PROMPT_PREFIX + message,
            "completion": json.dumps(label, separators=(", ", ": "))}


def near_duplicate(rng: random.Random, message: str) -> str:
    """Apply one small surface edit that keeps the meaning (and the label) unchanged."""
    edits = ["casing", "whitespace", "synonym", "punctuation"]
    rng.shuffle(edits)
    for edit in edits:
        if edit == "casing":
            new = " ".join(w if w.startswith("#") else w.lower() for w in message.split(" "))
        elif edit == "whitespace":
            words = message.split(" ")
            i = rng.randrange(1, len(words))
            new = " ".join(words[:i]) + rng.choice(["  ", "   "]) + " ".join(words[i:])
        elif edit == "synonym":
            hits = [w for w in SYNONYMS if re.search(rf"\b{w}\b", message)]
            if not hits:
                continue
            word = rng.choice(hits)
            new = re.sub(rf"\b{word}\b", SYNONYMS[word], message, count=1)
        else:
            last = message[-1]
            new = message[:-1] + {"." : "!", "!": ".", "?": "??"}.get(last, last + ".")
        if new != message:
            return new
    raise AssertionError(f"could not edit {message!r}")


def make_clean_rows(rng: random.Random, n_rows: int) -> tuple[list[dict], set[int]]:
    """Generate n_rows unique clean rows; return them plus the indices that contain PII."""
    pii_idx = set(rng.sample(range(n_rows), N_PII))
    rows, seen = [], set()
    for i in range(n_rows):
        while True:
            message, label = make_ticket(rng, with_pii=i in pii_idx)
            if message not in seen:
                break
        seen.add(message)
        rows.append(make_row(i + 1, message, label))
    return rows, pii_idx


def make_dup_rows(rng: random.Random, clean: list[dict], pii_idx: set[int]) -> tuple[list, list]:
    """Exact duplicates and near-duplicates of earlier (non-PII) clean rows, with new ids."""
    candidates = [i for i in range(len(clean)) if i not in pii_idx]
    sources = rng.sample(candidates, N_EXACT_DUPS + N_NEAR_DUPS)
    next_id = len(clean) + 1
    exact, near = [], []
    for k, src in enumerate(sources):
        row = dict(clean[src], id=f"t{next_id + k:04d}")
        if k >= N_EXACT_DUPS:
            message = row["prompt"][len(PROMPT_PREFIX):]
            row["prompt"] = PROMPT_PREFIX + near_duplicate(rng, message)
            near.append(row)
        else:
            exact.append(row)
    return exact, near


def make_malformed_lines(rng: random.Random, first_id: int) -> list[str]:
    """One line per malformed case; each broken in a different way."""
    rows = []
    for k in range(7):
        message, label = make_ticket(rng, with_pii=False)
        rows.append(make_row(first_id + k, message, label))
    dump = json.dumps
    full = dump(rows[0], ensure_ascii=False)
    lines = [
        full[: int(len(full) * 0.6)],  # truncated object, not valid JSON
        dump({"id": rows[1]["id"], "prompt": rows[1]["prompt"]}),  # missing completion
        dump(dict(rows[2], prompt="")),  # empty prompt
        dump(dict(rows[3], completion=42)),  # completion is a number
        dump({"id": rows[4]["id"], "text": rows[4]["prompt"][len(PROMPT_PREFIX):],
              "completion": rows[4]["completion"]}),  # unknown field, no prompt
        dump([rows[5]["id"], rows[5]["prompt"], rows[5]["completion"]]),  # array
        "",  # blank line
        dump(dict(rows[6], prompt=None)),  # prompt is null
    ]
    try:
        json.loads(lines[0])
    except json.JSONDecodeError:
        pass
    else:
        raise AssertionError("truncated line unexpectedly parses")
    rng.shuffle(lines)
    return lines


def spread_insert(rng: random.Random, good: list[str], bad: list[str]) -> list[str]:
    """Insert bad lines at one random spot per equal-sized segment, never first or last."""
    n, k = len(good), len(bad)
    bounds = [round(i * n / k) for i in range(k + 1)]
    positions = [rng.randint(bounds[i] + 1, bounds[i + 1] - 1) for i in range(k)]
    out = list(good)
    for pos, line in sorted(zip(positions, bad), key=lambda p: p[0], reverse=True):
        out.insert(pos, line)
    return out


def relabel(rng: random.Random, rows: list[dict], share: float) -> None:
    """Give `share` of the rows a random other intent and priority: labels no rule can predict, only memorise.

    Uses its own RNG, so the rest of the file is the same as without noise.
    """
    for row in rng.sample(rows, round(share * len(rows))):
        label = json.loads(row["completion"])
        label["intent"] = rng.choice([i for i in INTENTS if i != label["intent"]])
        label["priority"] = rng.choice([p for p in ("high", "medium", "low") if p != label["priority"]])
        row["completion"] = json.dumps(label, separators=(", ", ": "))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a seeded synthetic support-ticket JSONL file (clean rows plus "
                    f"{N_EXACT_DUPS} exact dups, {N_NEAR_DUPS} near dups, {N_PII} fake-PII "
                    "rows and 8 malformed lines). Same arguments -> byte-identical output.")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument("--rows", type=int, default=400,
                        help="number of clean rows, including the PII rows (default: 400)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output JSONL path (default: data/sample/support_tickets.jsonl)")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="share of clean rows whose intent and priority are relabelled at random, like data "
                             "labelled inconsistently by several people (default 0: labels follow the rules)")
    args = parser.parse_args()
    if not 0.0 <= args.label_noise <= 1.0:
        parser.error("--label-noise must be between 0 and 1")
    if args.rows < 100:
        parser.error("--rows must be at least 100")
    return args


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    clean, pii_idx = make_clean_rows(rng, args.rows)
    if args.label_noise:
        relabel(random.Random(args.seed + 1), clean, args.label_noise)
    exact, near = make_dup_rows(rng, clean, pii_idx)
    malformed = make_malformed_lines(rng, args.rows + len(exact) + len(near) + 1)
    good = [json.dumps(row, ensure_ascii=False) for row in clean + exact + near]
    rng.shuffle(good)
    lines = spread_insert(rng, good, malformed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        shown = args.out.resolve().relative_to(REPO_ROOT)
    except ValueError:
        shown = args.out
    print(f"wrote {len(lines)} lines to {shown}: clean={len(clean)}, "
          f"exact_dups={len(exact)}, near_dups={len(near)}, pii_rows={len(pii_idx)}, "
          f"malformed={len(malformed)}")


if __name__ == "__main__":
    main()
