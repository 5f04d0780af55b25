"""The submission port's certificate: the operator's files, or a self-signed pair made
once into the data dir and made again only when it has expired."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509

from postline.config import ConfigError
from postline.submission.tls import SELF_SIGNED_FILE, self_signed_pem, server_tls


def _not_after(path: Path) -> datetime.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_a_self_signed_pair_is_made_once_private_and_reused(tmp_path: Path) -> None:
    first = server_tls(tmp_path, "mail.example.test", "", "")
    assert first.self_signed and first.cert_file == tmp_path / SELF_SIGNED_FILE
    assert stat.S_IMODE(first.cert_file.stat().st_mode) == 0o600
    pem = first.cert_file.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.example.test" in names.get_values_for_type(x509.DNSName)
    again = server_tls(tmp_path, "mail.example.test", "", "")
    assert again.cert_file.read_bytes() == pem


def test_an_expired_self_signed_pair_is_replaced(tmp_path: Path) -> None:
    long_ago = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    (tmp_path / SELF_SIGNED_FILE).write_text(self_signed_pem("old.test", long_ago))
    renewed = server_tls(tmp_path, "mail.example.test", "", "")
    assert _not_after(renewed.cert_file) > datetime.datetime.now(datetime.UTC)


def test_the_operators_files_are_used_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    made = server_tls(tmp_path / "elsewhere", "mail.example.test", "", "")
    own = server_tls(tmp_path, "x", str(made.cert_file), str(made.cert_file))
    assert not own.self_signed and not (tmp_path / SELF_SIGNED_FILE).exists()
    with pytest.raises(ConfigError, match="POSTLINE_SUBMISSION_TLS_CERT/KEY"):
        server_tls(tmp_path, "x", str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"))
