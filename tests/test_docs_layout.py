"""The documentation reads at 1280 px: no table needs a horizontal scroll bar.

The site is built with mkdocs and every page with a table is opened in headless
Chromium at a 1280 px wide window; a small script measures how far each table
reaches past the box it sits in.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1280
#: a page that opens every page to check in a frame as wide as the window, and measures their tables
PROBE = """<!doctype html><html><head><title>waiting</title>
<style>body{{margin:0}} iframe{{width:{width}px;height:900px;border:0;display:block}}</style></head><body>
{frames}
<script>
window.addEventListener('load', () => {{
  const over = {{}};
  for (const frame of document.querySelectorAll('iframe')) {{
    let worst = 0;
    for (const table of frame.contentDocument.querySelectorAll('table')) {{
      const box = table.parentElement;
      worst = Math.max(worst, table.scrollWidth - box.clientWidth, box.scrollWidth - box.clientWidth);
    }}
    over[frame.dataset.page] = worst;
  }}
  document.title = 'OVER=' + JSON.stringify(over);
}});
</script></body></html>"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine to lay the pages out (apt-get install chromium)")


def _overflow(browser: str, site: Path, pages: list[Path]) -> dict[str, int]:
    """How far the widest table of each page reaches past its box, in px, all pages in one browser run."""
    frames = "\n".join(
        f'<iframe data-page="{p.parent.relative_to(site)}" src="{p.relative_to(site)}"></iframe>' for p in pages
    )
    probe = site / "layout-probe.html"
    probe.write_text(PROBE.format(width=WIDTH, frames=frames))
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         f"--window-size={WIDTH},900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r"<title>OVER=(.*?)</title>", out.stdout)
    assert found, f"the pages did not lay out: {out.stderr[-500:]}"
    return {str(k): int(v) for k, v in json.loads(html.unescape(found.group(1))).items()}


def test_no_table_scrolls_sideways_at_1280_px(tmp_path: Path) -> None:
    browser = _browser()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)], cwd=ROOT, check=True)
    pages = [p for p in site.rglob("index.html") if "<table" in p.read_text()]
    assert any("options" in str(p) for p in pages) and any("branching" in str(p) for p in pages)
    over = _overflow(browser, site, pages)
    assert len(over) == len(pages), over
    assert all(v <= 0 for v in over.values()), f"tables wider than their page at {WIDTH} px (px): {over}"
