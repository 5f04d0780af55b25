"""The overview page: the last 24 hours and 7 days (``GET /v1/stats``, per hour and per
day), and an hourly chart of the last 24 hours drawn as inline SVG on the server (no
chart script)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response

from postline.api import stats as stats_api
from postline.api.auth import services
from postline.dashboard import web
from postline.dashboard.guard import require
from postline.dashboard.session import SignedIn

#: What the chart draws per hour, each a counter of ``GET /v1/stats``.
SERIES = ("accepted", "delivered", "bounced", "deferred")

#: The chart's drawing area, in SVG user units (it scales to the page's width).
WIDTH, HEIGHT, LEFT, TOP, BOTTOM = 720, 230, 36, 10, 24


@dataclass(frozen=True)
class Bar:
    series: str
    x: float
    y: float
    width: float
    height: float
    count: int
    hour: str


def chart(hourly: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars for each hour and series, scaled to the busiest; y grows downwards in SVG."""
    top = max([h[s] for h in hourly for s in SERIES] + [1])
    slot = (WIDTH - LEFT) / max(len(hourly), 1)
    bar = slot * 0.8 / len(SERIES)
    area = HEIGHT - BOTTOM - TOP
    bars = []
    for i, hour in enumerate(hourly):
        for j, series in enumerate(SERIES):
            height = area * hour[series] / top
            bars.append(
                Bar(
                    series=series,
                    x=round(LEFT + i * slot + slot * 0.1 + j * bar, 1),
                    y=round(TOP + area - height, 1),
                    width=round(bar, 1),
                    height=round(height, 1),
                    count=hour[series],
                    hour=hour["hour"][11:16],
                )
            )
    labels = [
        {"x": round(LEFT + i * slot + slot / 2, 1), "text": h["hour"][11:16]}
        for i, h in enumerate(hourly)
        if i % 3 == 0
    ]
    ticks = [{"y": round(TOP + area - area * f, 1), "value": round(top * f)} for f in (0, 0.5, 1)]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "base": TOP + area,
        "bars": bars,
        "labels": labels,
        "ticks": ticks,
        "series": SERIES,
    }


#: The overview's windows: (route name, heading, bucket of GET /v1/stats, with the chart).
WINDOWS: dict[str, tuple[str, Literal["hour", "day"], bool]] = {
    "day": ("Last 24 hours", "hour", True),
    "week": ("Last 7 days", "day", False),
}


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def hours(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Every hour of the answer's window, those without events too (the API lists only
    the buckets that counted something)."""
    counted = {_moment(b["start"]): b for b in answer["data"]}
    start, end = _moment(answer["from"]), _moment(answer["to"])
    slots = []
    while start < end:
        found = counted.get(start, {})
        slots.append({"hour": start.isoformat()} | {s: found.get(s, 0) for s in SERIES})
        start += timedelta(hours=1)
    return slots


async def overview(request: Request, me: SignedIn) -> Response:
    """The page at once; each window's numbers follow from :func:`window` (htmx)."""
    return web.render(request, "overview.html", me, page="overview", windows=WINDOWS)


async def window(request: Request, me: SignedIn, name: str) -> Response:
    require(me, "stats")
    label, bucket, charted = WINDOWS[name]
    answer = await stats_api.stats(services(request), me.caller, bucket=bucket)
    return web.render(
        request,
        "_overview_window.html",
        me,
        window=name,
        label=label,
        t=answer["totals"],
        chart=chart(hours(answer)) if charted else None,
    )
