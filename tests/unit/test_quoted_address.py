"""MAIL FROM and RCPT TO addresses as they go on the wire: the fast path for plain
addresses must write what aiosmtplib's ``quote_address`` writes, byte for byte, and
anything else (display names, quoted local parts, non-ASCII, injection attempts) must
still get aiosmtplib's own answer, refusals included."""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address
from hypothesis import given, settings
from hypothesis import strategies as st

from postline.delivery import pipelining
from postline.delivery.pipelining import quoted

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=8)
labels = st.text(alphabet="abcXYZ019-", min_size=1, max_size=8)
plain = st.builds(
    lambda local, domain: ".".join(local) + "@" + ".".join(domain),
    st.lists(atoms, min_size=1, max_size=3),
    st.lists(labels, min_size=1, max_size=3),
)
# Around the plain ones: the characters parseaddr and aiosmtplib's checks care about,
# alone and put into a plain address (where a too-broad fast path would show).
ODD = ' .@<>"\\()[],;:\r\n\té'
anything = st.one_of(
    st.text(alphabet=ATEXT + ODD, max_size=24),
    st.builds(
        lambda address, at, odd: _put(address, at % (len(address) + 1), odd),
        plain,
        st.integers(min_value=0, max_value=40),
        st.sampled_from(ODD),
    ),
)


def _put(address: str, at: int, odd: str) -> str:
    return address[:at] + odd + address[at:]


def reference(address: str) -> bytes | type[ValueError]:
    try:
        return quote_address(address).encode("utf-8")
    except ValueError:
        return ValueError


def ours(address: str) -> bytes | type[ValueError]:
    try:
        return quoted(address)
    except ValueError:
        return ValueError


@given(plain)
def test_a_plain_address_takes_the_fast_path_and_is_written_as_aiosmtplib_writes_it(
    address: str,
) -> None:
    assert pipelining._PLAIN_ADDRESS.fullmatch(address)
    assert quoted(address) == reference(address)


@settings(max_examples=1000)
@given(anything)
def test_any_address_is_written_or_refused_as_aiosmtplib_would(address: str) -> None:
    assert ours(address) == reference(address)


@pytest.mark.parametrize(
    "address",
    [
        "User <user@example.com>",
        '"odd local"@example.com',
        "josé@example.com",
        "user@example.com>\r\nRCPT TO:<victim@example.com",
        "user@example.com NOTIFY=NEVER",
        "",
    ],
)
def test_what_is_not_plain_goes_through_aiosmtplib(address: str) -> None:
    assert not pipelining._PLAIN_ADDRESS.fullmatch(address)
    assert ours(address) == reference(address)
