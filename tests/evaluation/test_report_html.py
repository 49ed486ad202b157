"""The HTML report is one self-contained file: escaped text, tables, embedded figures."""

from __future__ import annotations

import base64
import io
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainer.report_html import HtmlReport, format_value


def test_report_embeds_figures_and_escapes_text(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    report = HtmlReport("Eval <run>")
    report.heading("Zero-shot & retrieval")
    report.paragraph("a < b", css_class="note")
    report.table(["label", "AUROC"], [["<script>", 0.81234], ["rare", math.nan], ["none", None]], caption="t")
    report.figure(buf.getvalue(), caption="ROC")
    text = report.write(tmp_path / "r.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "Eval &lt;run&gt;" in text
    assert "0.812" in text and text.count("undefined") == 2
    src = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    assert base64.b64decode(src) == buf.getvalue()
    assert not re.search(r'(src|href)="(?!data:)', text)


def test_format_value():
    assert format_value(0.5) == "0.500" and format_value(3) == "3" and format_value(float("nan")) == "undefined"
