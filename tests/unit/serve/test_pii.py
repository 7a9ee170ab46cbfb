"""The personal-data filter on literal strings: what is masked, and the financial figures that must stay."""

import pytest

from alignloop.serve.pii import PersonalDataFilter, luhn_ok, mask


@pytest.mark.parametrize("text, expected", [
    ("Mail me at jane.doe+x@example.co.uk today", "Mail me at [EMAIL] today"),
    ("call +1 555 123 4567.", "call [PHONE]."),
    ("Call (555) 123-4567 or 555-123-4567", "Call [PHONE] or [PHONE]"),
    ("UK office +44 20 7946 0958", "UK office [PHONE]"),
    ("Card 4111 1111 1111 1111 expires", "Card [CARD] expires"),
    ("card 4111111111111111", "card [CARD]"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [IBAN] please"),
    ("to GB82WEST12345698765432", "to [IBAN]"),
    ("My account number is 12345678, routing: 021000021", "My account number is [ACCOUNT], routing: [ACCOUNT]"),
    ("acct #9876-5432-10", "acct #[ACCOUNT]"),
    ("Order 1234567890 shipped", "Order [ACCOUNT] shipped"),
])
def test_masks_personal_data(text, expected):
    assert mask(text) == expected


@pytest.mark.parametrize("text", [
    "Revenue was $394,328 million in FY2022, up from 365,817 in 2021-2022.",
    "Years 2019 2020 2021 2022 and ratio 0.123456789",
    "EPS of 6.11; 3M's 10-K for 2023; page 45-47",
    "account 2021 results",
    "4111-1111-1111-1112",  # 16 digits that fail the Luhn check: not a card
])
def test_keeps_financial_figures(text):
    assert mask(text) == text


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def test_kinds_and_nested_messages():
    only_email = PersonalDataFilter(["email"])
    assert only_email.mask("a@b.io 555-123-4567") == "[EMAIL] 555-123-4567"
    assert PersonalDataFilter([]).mask("a@b.io") == "a@b.io"
    msgs = [{"role": "user", "content": "I am x@y.com"}, {"role": "assistant", "content": "ok"}]
    assert PersonalDataFilter().mask_any(msgs) == [{"role": "user", "content": "I am [EMAIL]"},
                                                   {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match="unknown personal-data kind"):
        PersonalDataFilter(["ssn"])
