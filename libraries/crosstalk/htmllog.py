"""HTML tables for log.html (rendered with ``logger.info(html, html=True)``).

Everything that came from the network is escaped; tokens in frames are masked;
long transcripts are capped (first and last rows kept) so log.html stays small.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .model import Frame, TestUser
from .secrets import mask_text
from .sequence import summarize

MAX_ROWS = 200
_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px;margin:4px 0;"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "", max_rows: int = MAX_ROWS
) -> str:
    """An escaped HTML table; beyond ``max_rows`` the middle rows are replaced by one 'omitted' row."""
    rows = list(rows)
    omitted = 0
    if len(rows) > max_rows:
        head = max_rows // 2
        omitted = len(rows) - max_rows
        rows = [*rows[:head], None, *rows[-(max_rows - head) :]]
    out = [f'<table style="{_STYLE}">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:bold">{html.escape(caption)}</caption>')
    out.append(
        "<tr>"
        + "".join(f'<th style="{_CELL};background:#eee">{html.escape(h)}</th>' for h in headers)
        + "</tr>"
    )
    for row in rows:
        if row is None:
            out.append(
                f'<tr><td style="{_CELL}" colspan="{len(headers)}">… {omitted} rows omitted …</td></tr>'
            )
            continue
        out.append(
            "<tr>" + "".join(f'<td style="{_CELL}">{html.escape(str(cell))}</td>' for cell in row) + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def frame_row(frame: Frame, origin: float | None = None) -> list[str]:
    data = frame.data or {}
    run = str(data.get("run_id") or data.get("client_message_id") or "")
    offset = f"+{frame.monotonic - origin:.3f}s" if origin is not None else ""
    return [
        f"{_clock(frame.at)} {offset}".strip(),
        "→ out" if frame.direction == "out" else "← in",
        frame.connection,
        str(frame.type or "(not JSON)"),
        run[:13] + ("…" if len(run) > 13 else ""),
        str(data.get("seq", "")),
        mask_text(summarize(frame.data, frame.raw, 160)),
    ]


def transcript(user: TestUser, frames: Sequence[Frame] | None = None, max_rows: int = MAX_ROWS) -> str:
    """One user's frames in and out, in time order, as an HTML table."""
    frames = sorted(frames if frames is not None else user.frames, key=lambda f: f.monotonic)
    origin = frames[0].monotonic if frames else None
    caption = f"Transcript of {user.label} ({user.email}) - {len(frames)} frames"
    headers = ("time", "dir", "connection", "type", "run", "seq", "summary")
    return table(headers, (frame_row(f, origin) for f in frames), caption, max_rows)
