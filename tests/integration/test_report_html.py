"""The HTML report in a real browser: Debian's headless chromium runs the page's own script.

The unit tests (tests/unit/test_report_templates.py) prove what the template writes; these
prove what a person gets: the filters read from the URL fragment hide the right rows, a change
of filter is written back to the fragment (a shareable link), a link to a hidden control shows
it, and the page renders to a screenshot with its styles applied. The page loads nothing from
the network, so chromium runs with networking features off.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from test_report_templates import SAMPLE, parse_html, render  # noqa: E402  pylint: disable=wrong-import-position

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--virtual-time-budget=2000"]


@pytest.fixture(scope="module")
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("%s is missing: run scripts/bootstrap (chromium is in requirements-apt.txt)" % CHROMIUM)
    return CHROMIUM


@pytest.fixture(scope="module")
def report():
    with open(SAMPLE) as handle:
        return yaml.safe_load(handle)["kvmsec_report"]


@pytest.fixture(scope="module")
def page(tmp_path_factory, report):
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render("report.html.j2", report))
    return path


def browse(chromium, tmp_path, url, *flags):
    """Run headless chromium once on URL; its stdout (the DOM for --dump-dom)."""
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    proc = subprocess.run([chromium, *FLAGS, "--user-data-dir=%s" % profile, *flags, url],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, "chromium exited %d:\n%s" % (proc.returncode, proc.stderr[-3000:])
    return proc.stdout


def visible(dom):
    """(host, id) of the control rows not hidden, and of those hidden."""
    rows = dom.find_all("tr", cls="ctl")
    assert rows, "no control rows in the DOM"
    shown = {(r.attrs["data-host"], r.attrs["data-id"]) for r in rows if "hidden" not in r.attrs}
    hidden = {(r.attrs["data-host"], r.attrs["data-id"]) for r in rows if "hidden" in r.attrs}
    return shown, hidden


def expected(report, status=None, severity=None, host=None, q=""):
    """What the filters must leave shown: the same rule, written independently of the page."""
    return {(h["host"], c["id"]) for h in report["hosts"] for c in h["controls"]
            if (status is None or c["status"] in status) and (severity is None or c["severity"] in severity)
            and (host is None or h["host"] in host)
            and (q.lower() in (c["id"] + " " + c["title"]).lower())}


@pytest.mark.parametrize("fragment, rule", [
    ("status=fail&host=kvmlab-apparmor", {"status": ["fail"], "host": ["kvmlab-apparmor"]}),
    ("status=fail,error&severity=high,medium&q=svirt", {"status": ["fail", "error"], "severity": ["high", "medium"],
                                                        "q": "svirt"}),
    ("status=not+applicable,waived&severity=high", {"status": ["not applicable", "waived"], "severity": ["high"]}),
])
def test_fragment_filters_rows_in_a_real_browser(chromium, tmp_path, page, report, fragment, rule):
    dom = parse_html(browse(chromium, tmp_path, page.as_uri() + "#" + fragment, "--dump-dom")).root
    assert dom.find("html").attrs.get("data-filters") == "ready", "the page's script did not run"
    shown, hidden = visible(dom)
    want = expected(report, **rule)
    assert want, "the case filters everything out: it would prove nothing"
    assert shown == want
    assert hidden == expected(report) - want
    # the form shows the state it was given, the counter agrees
    boxes = dom.find("form", id="filters").find_all("input", type="checkbox")
    for key in ("status", "severity", "host"):
        checked = [b.attrs["value"] for b in boxes if b.attrs["name"] == key and "checked" in b.attrs]
        every = [b.attrs["value"] for b in boxes if b.attrs["name"] == key]
        assert checked == [v for v in every if v in rule.get(key, every)], key
    assert dom.find("output", id="filter-shown").text().startswith("%d of %d" % (len(want), len(shown | hidden)))
    # a host filtered out loses its whole section; matrix cells filtered out are dimmed, not removed
    for section in dom.find_all("section", cls="host"):
        wanted = rule.get("host", [section.attrs["data-host"]])
        assert ("hidden" in section.attrs) == (section.attrs["data-host"] not in wanted)
    cells = dom.find_all("td", cls="cell")
    assert len(cells) == len(shown | hidden)
    assert {(c.attrs["data-host"], c.attrs["data-id"]) for c in cells if "dim" not in c.attrs["class"].split()} == want


# Driven from inside the page: an added script changes the filters the way a person would, then
# records the fragment and the rows left, for --dump-dom to show.
PROBE = """
<script>
window.addEventListener("load", function () {
  var out = {};
  function shownRows() {
    return [].filter.call(document.querySelectorAll("tr.ctl"), function (r) { return !r.hidden; })
      .map(function (r) { return r.dataset.host + " " + r.dataset.id; });
  }
  var pass = document.querySelector('input[name=status][value=pass]');
  pass.checked = false;
  pass.dispatchEvent(new Event("change", {bubbles: true}));
  var q = document.getElementById("filter-q");
  q.value = "SVIRT";
  q.dispatchEvent(new Event("input", {bubbles: true}));
  out.written = location.hash;
  out.afterTyping = shownRows();
  location.hash = "#c-kvmlab-apparmor--SVIRT-02";
  setTimeout(function () {
    out.linked = shownRows();
    out.linkedHidden = document.getElementById("c-kvmlab-apparmor--SVIRT-02").hidden;
    location.hash = "#host=kvmlab-selinux&severity=medium&q=virtualization%20booleans";
    setTimeout(function () {
      out.shared = shownRows();
      var probe = document.createElement("pre");
      probe.id = "probe";
      probe.textContent = JSON.stringify(out);
      document.body.appendChild(probe);
    }, 50);
  }, 50);
});
</script>
</body>"""


def test_filter_changes_are_written_to_the_fragment(chromium, tmp_path, page, report):
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE, 1))
    dom = parse_html(browse(chromium, tmp_path, probed.as_uri(), "--dump-dom")).root
    out = json.loads(dom.find("pre", id="probe").text())
    statuses = [s for s in report["statuses"] if s != "pass"]
    assert out["written"] == "#status=" + ",".join(s.replace(" ", "%20") for s in statuses) + "&q=SVIRT"
    assert set(out["afterTyping"]) == {"%s %s" % pair for pair in expected(report, status=statuses, q="svirt")}
    # a link to a control the filters hide clears them and shows it
    assert out["linkedHidden"] is False
    assert len(out["linked"]) == len(expected(report))
    # a shared link sets the filters, %-escapes decoded
    shared = expected(report, host=["kvmlab-selinux"], severity=["medium"], q="virtualization booleans")
    assert shared and set(out["shared"]) == {"%s %s" % pair for pair in shared}


def png_pixels(path):
    """(width, height, pixel(x, y) -> (r, g, b)) of an 8-bit RGB/RGBA PNG, stdlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6), header
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return width, height, lambda x, y: tuple(rows[y][x * channels:x * channels + 3])


def test_screenshot_renders_the_styled_page(chromium, tmp_path, page):
    shot = tmp_path / "report.png"
    browse(chromium, tmp_path, page.as_uri(), "--screenshot=%s" % shot, "--window-size=1400,2000")
    width, height, pixel = png_pixels(shot)
    assert (width, height) == (1400, 2000)
    # the masthead's navy band at the top, the page's light grey further down: the CSS applied
    assert pixel(5, 5) == (0x1d, 0x3a, 0x6e)
    assert pixel(5, 1990) == (0xf5, 0xf6, 0xf8)
    # and the page is not blank: many colours (badges, text) across the first screen
    colours = {pixel(x, y) for x in range(0, width, 7) for y in range(0, height, 7)}
    assert len(colours) > 200
    keep = os.environ.get("KVMSEC_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
