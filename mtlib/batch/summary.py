"""The batch summary: one row per job (status, seconds, frames, error), as JSON, CSV and HTML.

Rewritten after every job (each file in one atomic write), so a reader of the output folder
always sees the state of the batch: `pending` jobs not reached yet, `running`, `done`,
`skipped` (done by an earlier run with the same inputs and config), `failed` (the error names
the cause), `interrupted` (Ctrl-C; nothing of the job was left behind).
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

COLUMNS = ("id", "status", "seconds", "frames", "error", "video")
STATUSES = ("pending", "running", "done", "skipped", "failed", "interrupted")


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return {k: v for k, v in out.items() if v}


def to_json(batch: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    return json.dumps({"batch": dict(batch, counts=counts(rows)), "jobs": rows}, indent=1)


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None:
        return ""
    if col == "seconds":
        return f"{float(v):.1f}"
    return str(v)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r, c) for c in COLUMNS])
    return buf.getvalue()


def to_html(batch: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    colour = {
        "done": "#d4f7d4",
        "skipped": "#e8eefc",
        "failed": "#fbd5d5",
        "interrupted": "#fde9c8",
    }
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = []
    for r in rows:
        style = f' style="background:{colour[r["status"]]}"' if r["status"] in colour else ""
        cells = "".join(f"<td>{html.escape(_cell(r, c))}</td>" for c in COLUMNS)
        body.append(f"<tr{style}>{cells}</tr>")
    n = ", ".join(f"{v} {k}" for k, v in counts(rows).items())
    title = html.escape(f"mtlib batch {batch.get('jobs', '')} -> {batch.get('out', '')}")
    return (
        f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
        f"<h3>{title}</h3><p>{html.escape(n)}</p>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse;font-family:sans-serif'>"
        f"<tr>{head}</tr>{''.join(body)}</table>\n"
    )


def to_text(rows: list[dict[str, Any]], width: int = 90) -> str:
    """A plain-text table for the terminal (the error cut to fit)."""
    lines = [f"{'id':<14} {'status':<11} {'seconds':>8} {'frames':>6}  error"]
    for r in rows:
        err = (_cell(r, "error").splitlines() or [""])[0]
        err = err if len(err) <= width else err[: width - 3] + "..."
        lines.append(
            f"{r['id']:<14} {r['status']:<11} {_cell(r, 'seconds'):>8} {_cell(r, 'frames'):>6}  {err}"
        )
    return "\n".join(lines)
