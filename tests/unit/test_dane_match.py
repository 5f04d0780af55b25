"""DANE certificate matching (RFC 7672 3.1): usages 2 and 3, selectors 0/1, types 0/1/2."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from postline.delivery import dane
from postline.delivery.tls import Tlsa
from tests.harness.tls import ThrowawayCA


class _Presented:
    """What an ssl object tells of the chain the server sent (the public 3.13 form)."""

    def __init__(self, *certs: x509.Certificate) -> None:
        self.certs = certs

    def get_unverified_chain(self) -> list[bytes]:
        return [c.public_bytes(Encoding.DER) for c in self.certs]


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    made = ThrowawayCA.create(tmp_path)
    made.server_context("mx.a.test", with_ca=True)
    return made


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_the_leaf_by_every_selector_and_type(
    ca: ThrowawayCA, selector: int, mtype: int
) -> None:
    leaf = ca.server_certificate("mx.a.test")
    record = Tlsa(3, selector, mtype, dane.association(leaf, selector, mtype))
    # DANE-EE ignores names: a record for this key is enough whatever the MX is called.
    assert dane.check(_Presented(leaf, ca.certificate), [record], "any.name.test") is None


def test_dane_ta_needs_the_leaf_to_chain_to_it_and_carry_the_mx_name(ca: ThrowawayCA) -> None:
    leaf = ca.server_certificate("mx.a.test")
    record = Tlsa(2, 1, 1, dane.association(ca.certificate, 1, 1))
    presented = _Presented(leaf, ca.certificate)
    assert dane.check(presented, [record], "mx.a.test") is None
    assert dane.check(presented, [record], "mx.b.test") is not None
    # The anchor must be sent: a leaf alone cannot be matched against a TA record.
    assert dane.check(_Presented(leaf), [record], "mx.a.test") is not None


def test_a_record_for_another_key_does_not_match(ca: ThrowawayCA) -> None:
    leaf = ca.server_certificate("mx.a.test")
    assert dane.check(_Presented(leaf), [Tlsa(3, 1, 1, b"\0" * 32)], "mx.a.test") is not None


def test_only_unusable_records_mean_unauthenticated_tls(ca: ThrowawayCA) -> None:
    leaf = ca.server_certificate("mx.a.test")
    pkix = Tlsa(1, 1, 1, b"\0" * 32)  # PKIX-EE: not for SMTP (RFC 7672 3.1.3)
    assert not dane.usable(pkix)
    assert dane.check(_Presented(leaf), [pkix], "mx.a.test") is None
