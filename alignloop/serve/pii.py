"""Mask personal data in text before it is stored: e-mail addresses, phone numbers, card/IBAN/account numbers.

Regular expressions, tuned so financial text keeps its figures: amounts with thousands separators
("$394,328 million"), years and year ranges ("2021-2022", "FY2022") stay; card numbers are masked only when
they pass the Luhn check; bare account numbers are runs of 9 or more digits, or 6+ digits right after a word
like "account"/"acct"/"routing". These are well-known patterns, not a trained recogniser: they catch the
common forms, not every one, so treat them as a filter that lowers risk, not a guarantee.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

KINDS = ("email", "phone", "card", "iban", "account")

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,3}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r")(?![\w-])")
ACCOUNT_WORD = re.compile(r"(?i)\b(account|acct|a/c|routing|sort code|iban|customer (?:no|number)|policy)"
                          r"(\s*(?:no\.?|number|#)?\s*(?:is\b)?\s*:?\s*)([0-9][0-9 -]{4,}[0-9])")
LONG_DIGITS = re.compile(r"(?<![\d.,])\d{9,}(?![\d.,])")


def luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total, alt = total + d, not alt
    return total % 10 == 0


def _card(m: re.Match) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else m.group(0)


MASKERS: dict[str, Callable[[str], str]] = {
    "email": lambda t: EMAIL.sub("[EMAIL]", t),
    "iban": lambda t: IBAN.sub("[IBAN]", t),
    "card": lambda t: CARD.sub(_card, t),
    "phone": lambda t: PHONE.sub("[PHONE]", t),
    "account": lambda t: LONG_DIGITS.sub("[ACCOUNT]",
                                         ACCOUNT_WORD.sub(lambda m: m.group(1) + m.group(2) + "[ACCOUNT]", t)),
}


class PersonalDataFilter:
    """``mask(text)`` with the chosen kinds (all by default; an empty list turns masking off)."""

    def __init__(self, kinds: Iterable[str] | None = None):
        kinds = list(KINDS if kinds is None else kinds)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown personal-data kind(s) {unknown}; choose from {', '.join(KINDS)}")
        # order matters: e-mails first (their digits are not phones), IBANs before bare digit runs
        self.kinds = [k for k in ("email", "iban", "card", "phone", "account") if k in kinds]

    def mask(self, text: str) -> str:
        if not isinstance(text, str):
            return text
        for k in self.kinds:
            text = MASKERS[k](text)
        return text

    def mask_any(self, value):  # noqa: ANN001, ANN201
        """Strings, message lists ``[{"role", "content"}]`` and nested lists/dicts, masked recursively."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list):
            return [self.mask_any(v) for v in value]
        if isinstance(value, dict):
            return {k: (self.mask_any(v) if k != "role" else v) for k, v in value.items()}
        return value


def mask(text: str, kinds: Iterable[str] | None = None) -> str:
    return PersonalDataFilter(kinds).mask(text)
