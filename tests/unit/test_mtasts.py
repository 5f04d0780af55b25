"""MTA-STS parsing and MX matching (RFC 8461 3.1, 3.2, 4.1)."""

from __future__ import annotations

import pytest

from postline.delivery.mtasts import StsError, StsMode, mx_matches, parse_policy, parse_txt


def test_txt_gives_the_id_of_the_one_sts_record() -> None:
    assert parse_txt(["v=STSv1; id=20260101T000000;"]) == "20260101T000000"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc"]) == "abc"


@pytest.mark.parametrize(
    "texts",
    [[], ["v=spf1 -all"], ["v=STSv1; id=a;", "v=STSv1; id=b;"], ["v=STSv1; id=no-dashes"]],
)
def test_no_or_several_or_bad_sts_records_are_no_policy(texts: list[str]) -> None:
    assert parse_txt(texts) is None


def test_a_policy_parses_with_crlf_or_lf() -> None:
    text = (
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\n"
        "mx: *.example.net\nmax_age: 604800\r\n"
    )
    policy = parse_policy(text, "x1")
    assert policy.mode is StsMode.ENFORCE
    assert policy.patterns == ("mail.example.com", "*.example.net")
    assert policy.max_age == 604800 and policy.policy_id == "x1"


def test_max_age_is_capped_at_a_year() -> None:
    policy = parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n", "x")
    assert policy.max_age == 31_557_600


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a.test\nmax_age: 1\n",  # no version
        "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",  # unknown mode
        "version: STSv1\nmode: enforce\nmax_age: 1\n",  # no mx
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: soon\n",
        "<html>not a policy</html>",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(StsError):
        parse_policy(text, "x")


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.example.com.", True),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("mail.example.com", "evil-mail.example.com", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected
