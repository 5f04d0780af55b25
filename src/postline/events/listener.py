"""``postline webhooks listen``: a receiver for labs that prints what arrives.

It answers 200 to a delivery whose signature verifies (or to every delivery
when no secret is given) and 401 otherwise, like a careful receiver would.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def make_app(secret: str | None) -> Any:
    verifier = Webhook(secret) if secret else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, note = 200, "unverified (no --secret)"
        if verifier is not None:
            try:
                verifier.verify(body, headers)
                note = "signature ok"
            except WebhookVerificationError as exc:
                status, note = 401, f"signature REJECTED: {exc}"
        try:
            event = json.loads(body)
            data = event.get("data", {})
            summary = (
                f"{event.get('type')} {data.get('recipient', '')} "
                f"{data.get('status', '')} {data.get('enhanced_code') or ''}".rstrip()
            )
        except (ValueError, AttributeError):
            summary = f"{len(body)} bytes that are not a JSON event"
        print(f"{headers.get('webhook-id', '?')} {summary} [{note}]", flush=True)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def listen(port: int, secret: str | None) -> None:
    print(f"listening on http://127.0.0.1:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.run(make_app(secret), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
