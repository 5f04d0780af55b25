"""``from`` as the JSON shows it: one address, whatever the display name says."""

from __future__ import annotations

from email.utils import getaddresses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline.addresses import quoted_from

ADDRESS = "sender@example.test"


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (ADDRESS, ADDRESS),
        (f"Sender <{ADDRESS}>", f"Sender <{ADDRESS}>"),
        (f"Support <ceo@victim.test> <{ADDRESS}>", f'"Support <ceo@victim.test>" <{ADDRESS}>'),
        (f'Say "hi" <{ADDRESS}>', f'"Say \\"hi\\"" <{ADDRESS}>'),
        (f"Zoë, Inc. <{ADDRESS}>", f'"Zoë, Inc." <{ADDRESS}>'),
        # Not the shape Postline writes: the checked address alone.
        ("someone else <x@y.test>", ADDRESS),
    ],
)
def test_quoted_from(header: str, shown: str) -> None:
    assert quoted_from(header, ADDRESS) == shown


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1))
def test_any_display_name_reads_as_one_address(name: str) -> None:
    shown = quoted_from(f"{name} <{ADDRESS}>", ADDRESS)
    parsed = getaddresses([shown])
    assert len(parsed) == 1
    assert parsed[0][1] == ADDRESS
