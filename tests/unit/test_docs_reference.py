"""The documentation in docs/ keeps up with the code, and the repository stands alone.

- Every route the app serves (method and path, and every static mount) is named in
  docs/API.md, so an endpoint cannot be added without its reference.
- Every setting of ``postline.config.Settings`` is named in docs/CONFIGURATION.md.
- No tracked file points at a file outside the repository, or at a Markdown file
  that is not in it.
- The webhook signature checks that docs/API.md gives readers to copy accept what
  Postline's own signer produces, and refuse what it did not sign.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI
from starlette.routing import Mount

from postline.api.app import create_api
from postline.app import Services
from postline.config import Settings
from postline.events.signing import Signers, new_secret
from tests.harness import postline as harness
from tests.harness.capability import missing

ROOT = Path(__file__).resolve().parents[2]
API_REFERENCE = ROOT / "docs" / "API.md"
CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"


# --- routes --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    services = Services.build(harness.test_settings(tmp_path))
    try:
        yield create_api(services)
    finally:
        await services.close()


def served(app: FastAPI) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) of every route the app answers (HEAD aside), and the paths of the
    mounts that serve files rather than routes (the interactive docs' assets)."""
    routes: set[tuple[str, str]] = set()
    mounts: set[str] = set()

    def walk(items: list[Any], prefix: str) -> None:
        for route in items:
            inner = getattr(route, "original_router", None)
            if inner is not None:  # FastAPI >= 0.160 keeps included routers as branches
                walk(list(inner.routes), prefix + route.include_context.prefix)
            elif isinstance(route, Mount):
                if route.routes:
                    walk(list(route.routes), prefix + route.path)
                else:
                    mounts.add(prefix + route.path)
            else:
                for method in getattr(route, "methods", None) or ():
                    if method != "HEAD":
                        routes.add((method, prefix + route.path))

    walk(list(app.router.routes), "")
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            assert (method.upper(), path) in routes, f"the route walk missed {method} {path}"
    return routes, mounts


async def test_every_route_is_in_the_api_reference(app: FastAPI) -> None:
    reference = API_REFERENCE.read_text()
    routes, mounts = served(app)
    # Written as `GET /v1/emails` (the closing backquote keeps `GET /v1` from passing
    # for `GET /v1/emails`); path parameters as the app names them.
    missing_routes = sorted(f"{m} {p}" for m, p in routes if f"`{m} {p}`" not in reference)
    assert not missing_routes, f"routes docs/API.md does not mention: {missing_routes}"
    missing_mounts = sorted(m for m in mounts if f"`{m}/" not in reference)
    assert not missing_mounts, f"static mounts docs/API.md does not mention: {missing_mounts}"


async def test_the_route_walk_sees_the_interactive_docs(app: FastAPI) -> None:
    """The pages outside the OpenAPI document are found too, so they must be documented."""
    routes, _ = served(app)
    assert {("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")} <= routes


# --- settings ------------------------------------------------------------------------------


def test_every_setting_is_in_the_configuration_reference() -> None:
    reference = CONFIGURATION.read_text()
    names = sorted(f"POSTLINE_{field.upper()}" for field in Settings.model_fields)
    undocumented = [name for name in names if f"`{name}`" not in reference]
    assert not undocumented, f"settings docs/CONFIGURATION.md does not describe: {undocumented}"


# --- the repository stands alone -----------------------------------------------------------

#: Files that were never part of the repository. Assembled here, so that this file does
#: not name them itself.
OUTSIDE = ("shared/" + "API.md", "shared/" + "DESIGN" + ".md", "PEER" + "BENCH", "../" + "shared")
_MARKDOWN_NAME = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]+\.md\b")
_URL = re.compile(r"https?://\S+")
#: Files the project writes itself: vendored assets (minified JavaScript) cite their own docs.
_AUTHORED_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".sh", ".mako"}
_AUTHORED_NAMES = {"Makefile", "Containerfile", "run"}


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        missing("a git checkout", f"git ls-files: {exc}")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        return None  # binary (a vendored icon), or deleted but not yet committed


def test_no_tracked_file_mentions_a_file_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {o}" for o in OUTSIDE if o in line]
    assert not found, "mentions of files outside the repository:\n" + "\n".join(found)


def test_every_markdown_file_mentioned_is_in_the_repository() -> None:
    """A path such as ``docs/API.md`` must be a tracked file; a bare file name ending in
    ``.md`` must be some tracked file's name. Web addresses are not files."""
    files = tracked_files()
    paths = {str(path.relative_to(ROOT)) for path in files}
    names = {path.name for path in files}
    dangling = []
    for path in files:
        if path.suffix not in _AUTHORED_SUFFIXES and path.name not in _AUTHORED_NAMES:
            continue
        text = _text(path)
        if text is None:
            continue
        for mention in set(_MARKDOWN_NAME.findall(_URL.sub("", text))):
            bare = mention.rsplit("/", 1)[-1]
            relative = (path.parent / mention).resolve()
            inside = relative.is_relative_to(ROOT) and str(relative.relative_to(ROOT)) in paths
            if not (mention in paths or inside or ("/" not in mention and bare in names)):
                dangling.append(f"{path.relative_to(ROOT)}: {mention}")
    assert not dangling, "Markdown files that are not in the repository:\n" + "\n".join(
        sorted(dangling)
    )


# --- the signature checks of docs/API.md, against Postline's signer ------------------------


def code_block(language: str, containing: str) -> str:
    """The fenced ``language`` block of docs/API.md that contains ``containing``."""
    fence = re.compile(rf"^```{language}\n(.*?)^```", re.MULTILINE | re.DOTALL)
    blocks: list[str] = [b for b in fence.findall(API_REFERENCE.read_text()) if containing in b]
    assert len(blocks) == 1, f"docs/API.md has {len(blocks)} {language} blocks with {containing!r}"
    return blocks[0]


Verify = Callable[[str, dict[str, str], bytes], None]


def signed_delivery(
    secret: str,
    *,
    at: datetime | None = None,
    previous_secret: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body as the dispatcher sends them (``events.dispatcher.attempt``)."""
    now = at or datetime.now(UTC)
    event_id = "evt_01m94a5skxdqv314frjz1j5zd7"
    payload = {
        "type": "email.bounced",
        "created_at": now.isoformat().replace("+00:00", "Z"),
        "data": {"email_id": "em_01m94a5shwmdr0z4k8w9hscnhy", "recipient": "ana@example.org"},
    }
    body = json.dumps(payload, separators=(",", ":"))
    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Signers().header(
            secret=secret,
            previous_secret=previous_secret,
            rotated_at=now - timedelta(hours=1) if previous_secret else None,
            msg_id=event_id,
            timestamp=now,
            body=body,
        ),
    }
    return headers, body.encode()


def python_verify() -> Verify:
    namespace: dict[str, Any] = {}
    exec(compile(code_block("python", "def verify("), "docs/API.md", "exec"), namespace)
    verify: Verify = namespace["verify"]
    return verify


def node_verify() -> Verify:
    """The Node function of docs/API.md, run by ``node`` on each case."""
    node = shutil.which("node")
    if node is None:
        missing("Node.js", "no node on PATH, needed to run the Node example of docs/API.md")
    runner = code_block("javascript", "function verify(") + (
        "\nconst input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));\n"
        "try {\n"
        "  verify(input.secret, input.headers, Buffer.from(input.body, 'base64'));\n"
        "  console.log('ok');\n"
        "} catch (error) {\n"
        "  console.log('refused: ' + error.message);\n"
        "}\n"
    )

    def verify(secret: str, headers: dict[str, str], body: bytes) -> None:
        case = {"secret": secret, "headers": headers, "body": base64.b64encode(body).decode()}
        result = subprocess.run(
            [node, "-e", runner],
            input=json.dumps(case),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        if result.stdout.strip() != "ok":
            raise ValueError(result.stdout.strip() or result.stderr.strip())

    return verify


@pytest.fixture(params=["python", "node"])
def verify(request: pytest.FixtureRequest) -> Verify:
    return python_verify() if request.param == "python" else node_verify()


def test_the_documented_check_accepts_postline_signatures(verify: Verify) -> None:
    secret = new_secret()
    headers, body = signed_delivery(secret)
    verify(secret, headers, body)


def test_the_documented_check_accepts_either_secret_after_a_rotation(verify: Verify) -> None:
    old, new = new_secret(), new_secret()
    headers, body = signed_delivery(new, previous_secret=old)
    assert len(headers["webhook-signature"].split()) == 2
    verify(new, headers, body)
    verify(old, headers, body)


def test_the_documented_check_refuses_what_postline_did_not_sign(verify: Verify) -> None:
    secret = new_secret()
    headers, body = signed_delivery(secret)
    with pytest.raises(ValueError):
        verify(new_secret(), headers, body)  # another endpoint's secret
    with pytest.raises(ValueError):
        verify(secret, headers, body.replace(b"bounced", b"delivered"))  # a changed body
    with pytest.raises(ValueError):
        verify(secret, {**headers, "webhook-id": "evt_other"}, body)  # another event's id
    with pytest.raises(ValueError):
        verify(secret, {**headers, "webhook-timestamp": "soon"}, body)


def test_the_documented_check_refuses_an_old_delivery(verify: Verify) -> None:
    secret = new_secret()
    headers, body = signed_delivery(secret, at=datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(ValueError):
        verify(secret, headers, body)
    # Signed properly: only its age is wrong.
    assert abs(time.time() - int(headers["webhook-timestamp"])) > 300
