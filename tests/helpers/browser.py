"""Open an HTML page in a real headless browser (Debian's chromium) and report what loaded.

A copy of the page gets a small script that, once the page has loaded, counts the
images that decoded (``complete`` with a natural width) and writes the count into the
DOM; ``chromium --dump-dom`` prints the DOM after scripts ran. A screenshot is taken
too, so a person (and the test) can look at what rendered.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHECK = """
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  const el = document.createElement("div");
  el.id = "figure-check";
  el.textContent = `figures ${ok}/${imgs.length} width ${document.body.scrollWidth} height ${document.body.scrollHeight}`;
  document.body.appendChild(el);
});
</script>
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Rendered:
    figures_ok: int
    figures: int
    width: int
    height: int
    dom: str
    screenshot: Path


def render(page: Path, workdir: Path, timeout: float = 120.0) -> Rendered:
    browser = chromium()
    assert browser, "chromium is not installed (.ci/run installs it)"
    probe = workdir / "page_with_check.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=timeout, check=True
    ).stdout
    shot = workdir / "screenshot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1300,2400", page.as_uri()],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    m = re.search(r'id="figure-check">figures (\d+)/(\d+) width (\d+) height (\d+)<', dom)
    assert m, "the page's check script did not run (no #figure-check in the DOM)"
    ok, total, width, height = map(int, m.groups())
    return Rendered(ok, total, width, height, dom, shot)
