"""What tracking changes in an email's content, and only that."""

from __future__ import annotations

from postline.message import Content
from postline.tracking.rewrite import Linker, Tracking, apply
from postline.tracking.tokens import Token, Tokens

TOKENS = Tokens(b"k" * 32)
LINKER = Linker(TOKENS, "https://t.example", "em_x", "ada@example.org")


def _content(html: str | None, text: str | None = "see https://a.example/x") -> Content:
    return Content(
        from_name="",
        from_address="s@example.test",
        to=["ada@example.org"],
        subject="Hi",
        text=text,
        html=html,
    )


def test_nothing_asked_is_the_same_content() -> None:
    content = _content("<a href='https://a.example'>a</a>")
    assert apply(content, Tracking(), LINKER) is content


def test_only_http_links_of_anchors_are_rewritten_and_text_is_left_alone() -> None:
    html = (
        '<a href="https://a.example/?q=1&amp;r=2">a</a> <a data-href="https://b.example">b</a>'
        " <a href='mailto:x@y.example'>m</a> <A class=x HREF='http://c.example'>c</A>"
        ' <img src="https://d.example/i.png">'
    )
    out = apply(_content(html), Tracking(clicks=True), LINKER)
    assert out.text == "see https://a.example/x"
    assert out.html is not None
    assert "a.example" not in out.html and "c.example" not in out.html
    assert 'data-href="https://b.example"' in out.html
    assert "mailto:x@y.example" in out.html and "https://d.example/i.png" in out.html
    tokens = [part.split('"')[0] for part in out.html.split("https://t.example/t/c/")[1:]]
    urls = [TOKENS.check(t, "c") for t in tokens]
    assert urls == [
        Token("c", "em_x", "ada@example.org", "https://a.example/?q=1&r=2"),
        Token("c", "em_x", "ada@example.org", "http://c.example"),
    ]


def test_the_pixel_goes_before_the_end_of_the_body() -> None:
    out = apply(_content("<html><body><p>x</p></BODY></html>"), Tracking(opens=True), LINKER)
    assert out.html is not None
    assert out.html.startswith('<html><body><p>x</p><img src="https://t.example/t/o/')
    assert out.html.endswith("></BODY></html>")


def test_a_token_of_another_kind_or_key_does_not_check() -> None:
    token = TOKENS.make(Token("o", "em_x", "ada@example.org"))
    assert TOKENS.check(token, "o") == Token("o", "em_x", "ada@example.org")
    assert TOKENS.check(token, "c") is None
    assert Tokens(b"j" * 32).check(token, "o") is None
    assert TOKENS.check(token + "A", "o") is None
    assert TOKENS.check("", "o") is None


def test_a_token_whose_last_character_is_changed_is_refused_even_when_it_decodes_alike() -> None:
    """base64's last character carries spare bits: ``...B`` and ``...A`` can decode to the
    same bytes. Every other spelling of a token is refused, whichever bits change."""
    tokens = Tokens(b"k" * 32)
    made = tokens.make(Token("c", "em_1", "a@dest.test", "https://shop.example/x"))
    assert tokens.check(made, "c") is not None
    body, mac = made.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for other in alphabet.replace(mac[-1], ""):
        assert tokens.check(f"{body}.{mac[:-1]}{other}", "c") is None
    for other in alphabet.replace(body[-1], ""):
        assert tokens.check(f"{body[:-1]}{other}.{mac}", "c") is None


def test_a_token_of_any_characters_is_refused_not_an_error() -> None:
    tokens = Tokens(b"k" * 32)
    for text in (".\U000cb12d\x8cW", "\u00e9.\u00e9", "..", ".", "", "a.b.c", "=.="):
        assert tokens.check(text, "u") is None
