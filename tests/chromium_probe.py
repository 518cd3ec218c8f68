"""Headless-Chromium rendering check shared by the report tests."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

# Page errors are captured, and every image is drawn onto a canvas and read back (a forced,
# synchronous decode), then the result is written into the DOM for --dump-dom to return.
PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  window.__errs.push(String(e.message || (e.target && (e.target.src || e.target.tagName))));
}, true);
window.addEventListener('load', function () {
  // the load event waits for every image; drawing each onto a canvas and reading pixels back
  // forces a full decode, synchronously (so --dump-dom always sees the result)
  var imgs = Array.prototype.slice.call(document.images), decoded = 0, bad = [];
  imgs.forEach(function (i, k) {
    try {
      if (!(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)) throw 'not loaded';
      var c = document.createElement('canvas');
      c.width = i.naturalWidth; c.height = i.naturalHeight;
      var ctx = c.getContext('2d');
      ctx.drawImage(i, 0, 0);
      var px = ctx.getImageData(0, 0, c.width, c.height).data, any = false;
      for (var j = 3; j < px.length; j += 4 * 97) { if (px[j] > 0) { any = true; break; } }
      if (!any) throw 'blank';
      decoded += 1;
    } catch (err) { bad.push(k + ': ' + err); }
  });
  var d = document.createElement('pre');
  d.id = '__probe';
  d.textContent = JSON.stringify({n: imgs.length, decoded: decoded, bad: bad,
                                  errors: window.__errs});
  document.body.appendChild(d);
});
</script>"""


def render_probe(html: str, tmp_path) -> dict:
    """Render ``html`` in headless Chromium; return ``{n, decoded, bad, errors}``.

    Fails (never skips) when Chromium is missing: `.ci/run` installs it.
    """
    if CHROMIUM is None:
        pytest.fail("chromium not found: the report tests need headless Chromium. `.ci/run` "
                    "installs it (apt-get install -y chromium).")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="__probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"probe did not run (rc={res.returncode}): {res.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
