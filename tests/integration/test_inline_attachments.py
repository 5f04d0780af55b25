"""An attachment with ``content_id`` goes out inline, next to the HTML that names it.

Checked on what the fake MX received: text and (HTML with its image) as alternatives,
the HTML and the image in one multipart/related, the regular attachment beside them
in multipart/mixed; and a type guessed from the file name when none is given.
"""

from __future__ import annotations

import base64
from email.message import EmailMessage

from tests.harness import FakeMX
from tests.harness.postline import PostlineUnderTest

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def test_inline_image_in_related_inside_alternative_and_attachment_in_mixed(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(
        to="reader@dest.test",
        text="See the logo",
        html='<p><img src="cid:logo@example.test"></p>',
        attachments=[
            {"filename": "logo.png", "content": _b64(PNG), "content_id": "<logo@example.test>"},
            {"filename": "report.pdf", "content": _b64(b"%PDF-1.4 ...")},
        ],
    )
    await postline.wait_for_status(sent["id"], ["delivered"])
    (received,) = fake_mx.received
    message = received.message
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = _parts(message)
    assert alternative.get_content_type() == "multipart/alternative"
    plain, related = _parts(alternative)
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = _parts(related)
    assert html.get_content_type() == "text/html"
    assert "cid:logo@example.test" in html.get_content()
    assert image.get_content_type() == "image/png"  # guessed from logo.png
    assert image["Content-ID"] == "<logo@example.test>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "report.pdf"


async def test_html_only_with_an_inline_image_is_multipart_related(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(
        to="reader@dest.test",
        text=None,
        html='<img src="cid:pic">',
        attachments=[{"filename": "pic.gif", "content": _b64(b"GIF89a"), "content_id": "pic"}],
    )
    await postline.wait_for_status(sent["id"], ["delivered"])
    (received,) = fake_mx.received
    message = received.message
    assert message.get_content_type() == "multipart/related"
    html, image = _parts(message)
    assert html.get_content_type() == "text/html"
    assert (image.get_content_type(), image["Content-ID"]) == ("image/gif", "<pic>")


async def test_a_content_id_with_spaces_is_refused(postline: PostlineUnderTest) -> None:
    body = {
        "from": "sender@example.test",
        "to": "reader@dest.test",
        "subject": "Hi",
        "html": "<p>hi</p>",
        "attachments": [{"filename": "a.png", "content": _b64(PNG), "content_id": "a b"}],
    }
    response = await postline.client.post("/v1/emails", json=body, headers=postline.auth())
    assert response.status_code == 422, response.text
    assert "content_id" in response.text
