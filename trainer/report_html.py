"""A self-contained HTML report: headings, text, tables and figures in one file.

Figures are embedded as base64 PNG (``data:`` URIs) and the style sheet is inline, so the
file can be mailed or archived alone and opened anywhere without the folder it came from.
Every piece of text is HTML-escaped. Used by ``evaluate`` and the demo.

    report = HtmlReport("Evaluation")
    report.heading("Zero-shot")
    report.table(["label", "AUROC"], [["Cardiomegaly", 0.81]], caption="...")
    report.figure(png_bytes, caption="ROC curves")
    report.write(Path("report.html"))
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; font-size: 0.9em; }
.note { background: #fff6dd; border-left: 4px solid #e0b000; padding: .5em 1em; }
.meta { color: #666; font-size: 0.85em; }
.pre { white-space: pre; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.8em; overflow-x: auto; }
"""


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers to fixed digits; None and NaN to 'undefined'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class HtmlReport:
    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        level = min(max(level, 2), 4)
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str | None = None) -> None:
        cls = f' class="{html.escape(css_class)}"' if css_class else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None, digits: int = 3
    ) -> None:
        out = ["<table>"]
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(format_value(v, digits))}</td>" for v in row) + "</tr>")
        out.append("</table>")
        self._parts.append("\n".join(out))

    def figure(self, png: bytes | Path, caption: str | None = None, alt: str | None = None) -> None:
        data = png.read_bytes() if isinstance(png, Path) else png
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img src="{uri}" alt="{html.escape(alt or caption or "figure")}">{cap}</figure>')

    def render(self) -> str:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        body = "\n".join(self._parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>\n{body}\n"
            f'<p class="meta">Written {created} by x2ct-pipeline.</p>\n</body></html>\n'
        )

    def write(self, path: str | Path) -> Path:
        from pipeline.runtime import atomic_write_text

        atomic_write_text(path, self.render())
        return Path(path)
