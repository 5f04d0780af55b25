"""What every dashboard answer shares: templates, security headers, forms, flashes.

Templates autoescape everything (subjects, SMTP replies, addresses, header values and
webhook response bodies are untrusted), and every page goes out with a
Content-Security-Policy that allows scripts from this origin only: no inline script
runs, even if some text escaped the escaping.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from postline import __version__
from postline.dashboard import session
from postline.dashboard.session import SignedIn

HERE = Path(__file__).parent
ASSETS_PATH = "/assets"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FLASH_COOKIE = "postline_flash"
#: Form bodies the dashboard reads: its forms are a few short fields.
FORM_LIMIT = 16 * 1024


def _when(value: str | None) -> str:
    """An RFC 3339 time of the API as ``2026-12-06 07:01:02`` (UTC)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S")


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    enable_async=False,
)
templates.filters["when"] = _when
templates.globals["version"] = __version__
templates.globals["assets"] = ASSETS_PATH


def render(
    request: Request,
    name: str,
    me: SignedIn | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    flash = context.pop("flash", None) or read_flash(request)
    html = templates.get_template(name).render(
        request=request, me=me, csrf=me.csrf if me else "", flash=flash, **context
    )
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect(request: Request, to: str, flash: tuple[str, str] | None = None) -> Response:
    """See Other: a form's answer, so a reload does not post it again. The flash
    (kind, text) rides in a short-lived cookie to the next page."""
    response = RedirectResponse(to, status_code=303, headers=HEADERS)
    if flash is not None:
        kind, text = flash
        value = base64.urlsafe_b64encode(f"{kind}\n{text}".encode()).decode()
        session.set_cookie(request, response, FLASH_COOKIE, value, max_age=60)
    return response


def read_flash(request: Request) -> dict[str, str] | None:
    value = request.cookies.get(FLASH_COOKIE)
    if not value:
        return None
    try:
        kind, _, text = base64.urlsafe_b64decode(value.encode()).decode().partition("\n")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return {"kind": "error" if kind == "error" else "ok", "text": text[:500]}


async def form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); a bigger body is no form
    of the dashboard's and reads as empty, which fails its CSRF check."""
    body = await request.body()
    if len(body) > FORM_LIMIT:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}
