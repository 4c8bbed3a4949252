"""The report templates (playbooks/templates/report.html.j2 and junit.xml.j2) against the data
contract kvmsec.hardening/report/1, rendered with plain Jinja exactly as Ansible's template
module configures it (trim_blocks, lstrip_blocks, no autoescape), from the sample in
tests/unit/data/report/sample.yml. No browser here: tests/integration/test_report_html.py runs
the page's filters in a real one.
"""

import copy
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "playbooks" / "templates"
SAMPLE = Path(__file__).resolve().parent / "data" / "report" / "sample.yml"
SKIPPED = ("waived", "not applicable", "skipped")
# a value that breaks the page or the XML wherever it is not escaped; the templates never write
# an <x-inj> element themselves
INJECTED = "<x-inj a=\"1\">&amp;'</x-inj>"


def sample():
    with open(SAMPLE) as handle:
        return yaml.safe_load(handle)["kvmsec_report"]


def render(name, report, undefined=jinja2.StrictUndefined):
    # StrictUndefined: Ansible fails on undefined values too, so the templates must not lean on
    # Jinja's silent default. A missing (Ansible-only) filter fails here at compile time.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=undefined)
    return env.get_template(name).render(kvmsec_report=report)


def results(report):
    return [(host["host"], control) for host in report["hosts"] for control in host["controls"]]


def every_control(report):
    return [control for host in report["hosts"] for control in host["controls"]]


# ---------------------------------------------------------------------------------------------
# A small DOM of the rendered HTML (stdlib only); building it fails on unbalanced markup.

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag=None, cls=None, **attrs):
        found = []
        for node in self.iter():
            if tag and node.tag != tag:
                continue
            if cls and cls not in node.attrs.get("class", "").split():
                continue
            if any(node.attrs.get(key.replace("_", "-")) != value for key, value in attrs.items()):
                continue
            found.append(node)
        return found

    def find(self, tag=None, cls=None, **attrs):
        found = self.find_all(tag, cls, **attrs)
        assert found, "no <%s class=%s %s> in <%s %s>" % (tag, cls, attrs, self.tag, self.attrs)
        return found[0]

    def text(self):
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, attrs, self.current))

    def handle_endtag(self, tag):
        assert tag not in VOID, "</%s> closes a void element" % tag
        assert self.current.tag == tag, "</%s> closes <%s %s>" % (tag, self.current.tag, self.current.attrs)
        self.current = self.current.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse_html(text):
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.current is builder.root, "<%s> is never closed" % builder.current.tag
    return builder


@pytest.fixture(scope="module")
def report():
    return sample()


@pytest.fixture(scope="module")
def html(report):
    return render("report.html.j2", report)


@pytest.fixture(scope="module")
def dom(html):
    return parse_html(html).root


@pytest.fixture(scope="module")
def junit(report):
    return ET.fromstring(render("junit.xml.j2", report).encode())


# ---------------------------------------------------------------------------------------------
# The sample: the other tests are only as good as it is.

def test_sample_is_consistent_and_covers_every_case(report):
    statuses = report["statuses"]
    assert report["schema"] == "kvmsec.hardening/report/1"
    assert len(report["hosts"]) == 2
    ids = [c["id"] for c in report["catalogue"]]
    for host in report["hosts"]:
        assert [c["id"] for c in host["controls"]] == ids
        counted = dict((s, sum(1 for c in host["controls"] if c["status"] == s)) for s in statuses)
        assert host["summary"] == counted, host["host"]
        limit = report["severities"].index(report["gate"]["severity"])
        assert host["gate_failing"] == [c["id"] for c in host["controls"] if c["status"] in ("fail", "error")
                                        and report["severities"].index(c["severity"]) <= limit]
    assert report["totals"] == dict((s, sum(h["summary"][s] for h in report["hosts"])) for s in statuses)
    assert report["gate"]["failing"] == [{"host": h["host"], "id": cid}
                                         for h in report["hosts"] for cid in h["gate_failing"]]
    assert report["gate"]["passed"] is False
    assert {c["status"] for c in every_control(report)} == set(statuses)
    assert [c["waiver"]["expired"] for c in every_control(report) if c["waiver"]].count(True) == 1
    texts = "".join(e["text"] for c in every_control(report) for e in c["evidence"])
    assert "<seclabel type='none'" in texts and "&" in texts and '"' in texts
    assert report["changes"]["hosts"]


# ---------------------------------------------------------------------------------------------
# JUnit

def test_junit_counts_match_the_data(report, junit):
    assert junit.tag == "testsuites" and junit.get("name") == "kvmsec.hardening"
    every = every_control(report)
    assert int(junit.get("tests")) == len(every) == len(junit.findall("testsuite/testcase"))
    assert int(junit.get("failures")) == report["totals"]["fail"] == len(junit.findall(".//failure"))
    assert int(junit.get("errors")) == report["totals"]["error"] == len(junit.findall(".//error"))
    assert int(junit.get("skipped")) == sum(report["totals"][s] for s in SKIPPED) == len(junit.findall(".//skipped"))
    suites = junit.findall("testsuite")
    assert [s.get("name") for s in suites] == [h["host"] for h in report["hosts"]]
    for suite, host in zip(suites, report["hosts"]):
        summary = host["summary"]
        assert int(suite.get("tests")) == len(host["controls"]) == len(suite.findall("testcase"))
        assert int(suite.get("failures")) == summary["fail"]
        assert int(suite.get("errors")) == summary["error"]
        assert int(suite.get("skipped")) == sum(summary[s] for s in SKIPPED)
        cases = suite.findall("testcase")
        assert [c.get("classname") for c in cases] == ["kvmsec." + host["host"]] * len(cases)
        assert [c.get("name") for c in cases] == [c["id"] + " " + c["title"] for c in host["controls"]]


def case_of(junit, host, control):
    suite = junit.find("testsuite[@name='%s']" % host)
    matches = [c for c in suite.findall("testcase") if c.get("name") == control["id"] + " " + control["title"]]
    assert len(matches) == 1
    return matches[0]


def test_junit_maps_every_status(report, junit):
    seen = set()
    for host, control in results(report):
        case = case_of(junit, host, control)
        children = [child.tag for child in case]
        status = control["status"]
        seen.add(status)
        evidence = [e["text"].strip() for e in control["evidence"] if e["text"].strip()]
        if status in ("fail", "error"):
            tag = "failure" if status == "fail" else "error"
            assert children == [tag], (host, control["id"])
            element = case.find(tag)
            assert element.get("message") == control["reason"]
            assert element.get("type") == status
            for text in evidence + [control["remediation"]]:
                assert text in element.text, (host, control["id"], text)
        elif status == "waived":
            assert children == ["skipped"]
            message = case.find("skipped").get("message")
            for part in ("justification", "owner", "expires"):
                assert control["waiver"][part] in message
        elif status in SKIPPED:
            assert children == ["skipped"]
            assert control["reason"] in case.find("skipped").get("message")
        elif status == "fixed":
            assert children == ["system-out"]
            for text in evidence:
                assert text in case.find("system-out").text
        else:
            assert status == "pass" and children == []
    assert seen == set(report["statuses"])


def test_junit_says_a_waiver_expired(report, junit):
    host, control = next((h, c) for h, c in results(report) if c["waiver"] and c["waiver"]["expired"])
    assert control["status"] == "fail"
    assert "EXPIRED" in case_of(junit, host, control).find("failure").text
    expired_waived = copy.deepcopy(report)
    target = next(c for h in expired_waived["hosts"] for c in h["controls"] if c["waiver"] and c["waiver"]["expired"])
    target["status"] = "waived"
    again = ET.fromstring(render("junit.xml.j2", expired_waived).encode())
    assert "EXPIRED" in case_of(again, host, target).find("skipped").get("message")


def test_junit_escapes_text_and_drops_what_xml_cannot_carry(report):
    nasty = copy.deepcopy(report)
    control = nasty["hosts"][0]["controls"][0]
    control.update(status="fail", title='a "quoted" & <b>title</b>', reason='<script>alert("x")</script> & \'q\'',
                   evidence=[{"task": "t <1>", "outcome": "failed",
                              "text": "\x1b[31mred\x1b[0m ]]> & <seclabel type='none'/>\x00"}])
    text = render("junit.xml.j2", nasty)
    assert "<script>" not in text and "<seclabel" not in text
    root = ET.fromstring(text.encode())
    case = case_of(root, nasty["hosts"][0]["host"], control)
    failure = case.find("failure")
    assert failure.get("message") == control["reason"]
    assert "[31mred[0m ]]> & <seclabel type='none'/>" in failure.text
    assert "\x1b" not in failure.text


def test_junit_declaration_comes_first(report):
    assert render("junit.xml.j2", report).startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites ')


# ---------------------------------------------------------------------------------------------
# HTML

def test_html_is_one_balanced_document(html):
    builder = parse_html(html)
    assert builder.doctype.lower() == "doctype html"
    assert [n.tag for n in builder.root.children if isinstance(n, Node)] == ["html"]
    assert html.count("<script") == 1 and html.count("<style") == 1


def test_every_result_has_a_row_and_a_matrix_cell_with_its_data(report, dom):
    rows = dom.find_all("tr", cls="ctl")
    cells = dom.find_all("td", cls="cell")
    assert len(rows) == len(cells) == len(results(report))
    for host, control in results(report):
        expected = {"data-host": host, "data-id": control["id"], "data-status": control["status"],
                    "data-severity": control["severity"]}
        row = [r for r in rows if r.attrs["data-host"] == host and r.attrs["data-id"] == control["id"]]
        cell = [c for c in cells if c.attrs["data-host"] == host and c.attrs["data-id"] == control["id"]]
        assert len(row) == 1 and len(cell) == 1, (host, control["id"])
        row, cell = row[0], cell[0]
        for name, value in expected.items():
            assert row.attrs[name] == value and cell.attrs[name] == value, (host, control["id"], name)
        # the cell links to the row, and both say the status in words, not colour alone
        assert cell.find("a").attrs["href"] == "#" + row.attrs["id"]
        label = {"not applicable": "N/A"}.get(control["status"], control["status"].upper())
        assert cell.find("span", cls="badge").text() == label
        assert row.find("td", cls="c-status").text().strip() == label
        assert row.find("td", cls="c-title").text().startswith(control["title"])
        assert row.find("p", cls="reason").text() == control["reason"]
        # and the row sits in its host's section
        section = row
        while section.tag != "section":
            section = section.parent
        assert section.attrs["data-host"] == host


def test_matrix_columns_follow_the_catalogue_with_titles(report, dom):
    headers = [th for th in dom.find("tr", cls="ids").find_all("th") if "data-id" in th.attrs]
    assert [th.text() for th in headers] == [c["id"] for c in report["catalogue"]]
    for th, control in zip(headers, report["catalogue"]):
        assert th.attrs["title"].startswith(control["title"])
    for host, row in zip(report["hosts"], dom.find("table", cls="matrix").find("tbody").find_all("tr")):
        assert [c.attrs["data-id"] for c in row.find_all("td", cls="cell")] == [c["id"] for c in report["catalogue"]]


def test_evidence_remediation_references_and_waivers_are_shown(report, dom):
    for host, control in results(report):
        row = dom.find("tr", cls="ctl", id="c-%s--%s" % (host, control["id"]))
        if control["evidence"] or control["remediation"] or control["references"]:
            details = row.find("details")
            assert ("open" in details.attrs) == (control["status"] in ("fail", "error"))
            items = details.find_all("li") if control["evidence"] else []
            for item in control["evidence"]:
                shown = [li for li in items if li.find_all("span", cls="outcome")
                         and li.find("div", cls="ev-head").text() == item["outcome"] + item["task"]]
                assert len(shown) == 1, (host, control["id"], item["task"])
                if item["text"].strip():
                    assert shown[0].find("pre").text() == item["text"].strip()
            if control["remediation"]:
                assert details.find("p", cls="remediation").find("code").text() == control["remediation"]
            for reference in control["references"]:
                assert reference in [li.text() for li in details.find("div", cls="refs").find_all("li")]
        else:
            assert not row.find_all("details")
        waiver = control["waiver"]
        boxes = row.find_all("div", cls="waiver")
        if not waiver:
            assert not boxes
            continue
        box = boxes[0]
        for part in ("justification", "owner", "expires"):
            assert waiver[part] in box.text()
        assert ("EXPIRED" in box.text()) == waiver["expired"]
        assert ("expired" in box.attrs["class"].split()) == waiver["expired"]


def test_header_shows_run_and_totals(report, dom):
    masthead = dom.find("header", cls="masthead")
    assert "Hardening run" in masthead.find("span", cls="mode").text()
    assert masthead.find("time").attrs["datetime"] == report["generated"]
    assert "2026-12-01 22:10:00 UTC" in masthead.text()
    assert report["collection_version"] in masthead.text()
    totals = dom.find("div", cls="totals-bar")
    for status in report["statuses"]:
        count = totals.find("li", cls="st-" + status.replace(" ", "-"))
        assert count.find("b").text() == str(report["totals"][status])


def test_gate_failed_names_hosts_and_controls(report, dom):
    gate = dom.find("section", id="gate")
    assert gate.attrs["data-gate"] == "failed"
    assert "GATE FAILED" in gate.text() and report["gate"]["severity"] in gate.text()
    links = [(a.attrs["href"], a.text()) for a in gate.find_all("a")]
    assert sorted(links) == sorted(("#c-%s--%s" % (f["host"], f["id"]), f["id"]) for f in report["gate"]["failing"])
    for item in gate.find_all("li"):
        host = item.find("b").text()
        assert {a.text() for a in item.find_all("a")} == {f["id"] for f in report["gate"]["failing"] if f["host"] == host}


@pytest.mark.parametrize("mode, gate, verdict, words", [
    ("audit", {"severity": "high", "passed": True, "failing": []}, "passed", "GATE PASSED"),
    ("audit", {"severity": "none", "passed": True, "failing": []}, "off", "GATE OFF"),
])
def test_header_other_modes_and_gates(report, mode, gate, verdict, words):
    other = copy.deepcopy(report)
    other.update(mode=mode, gate=gate)
    for host in other["hosts"]:
        host["gate_failing"] = []
    dom = parse_html(render("report.html.j2", other)).root
    assert dom.find("span", cls="mode").text() == "Audit: check mode, nothing was changed"
    assert dom.find("section", id="gate").attrs["data-gate"] == verdict
    assert words in dom.find("section", id="gate").text()
    assert "Compliance audit report" in dom.find("h1").text()


def test_changes_section_lists_every_move(report, dom):
    section = dom.find("section", id="changes")
    rows = section.find("tbody").find_all("tr")
    moves = [(h["host"], c) for h in report["changes"]["hosts"] for c in h["changes"]]
    assert len(rows) == len(moves)
    for row, (host, change) in zip(rows, moves):
        assert (row.attrs["data-host"], row.attrs["data-id"]) == (host, change["id"])
        assert (row.attrs["data-before"], row.attrs["data-after"]) == (change["before"], change["after"])
        trend = row.find("span", cls="trend").attrs["class"]
        if change["after"] in ("fail", "error") and change["before"] not in ("fail", "error"):
            assert "trend-regression" in trend
        elif change["before"] in ("fail", "error") and change["after"] in ("fixed", "pass"):
            assert "trend-improvement" in trend
        else:
            assert "trend-change" in trend


def test_no_changes_section_without_a_baseline(report):
    for changes in (None, "absent"):
        other = copy.deepcopy(report)
        if changes == "absent":
            del other["changes"]
        else:
            other["changes"] = changes
        text = render("report.html.j2", other)
        assert 'id="changes"' not in text


def test_filters_offer_every_status_severity_and_host(report, dom):
    form = dom.find("form", id="filters")

    def values(name):
        return [i.attrs["value"] for i in form.find_all("input", type="checkbox") if i.attrs["name"] == name]
    assert values("status") == report["statuses"]
    assert values("severity") == report["severities"]
    assert values("host") == [h["host"] for h in report["hosts"]]
    assert form.find("input", type="search").attrs["name"] == "q"


def test_html_loads_nothing_from_outside(html, dom):
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", html, re.I)
    for node in dom.iter():
        assert "src" not in node.attrs, node.tag
        assert node.tag not in ("link", "iframe", "img", "object", "embed"), node.tag
        if "href" in node.attrs:
            assert node.attrs["href"].startswith("#"), node.attrs["href"]
        if "action" in node.attrs:
            raise AssertionError("a form posts somewhere: %s" % node.attrs)


def inject(value):
    """Every free-text string of the report, with INJECTED appended (IDs and host names too)."""
    if isinstance(value, dict):
        fixed = ("status", "severity", "mode", "before", "after", "outcome", "schema")
        return dict((k, v if k in fixed else inject(v)) for k, v in value.items())
    if isinstance(value, list):
        return [inject(v) for v in value]
    if isinstance(value, str):
        return value + INJECTED
    return value


def test_every_value_is_escaped_in_both_templates(report):
    nasty = inject(report)
    nasty["statuses"], nasty["severities"] = report["statuses"], report["severities"]
    nasty["hosts"][0]["controls"][0]["reason"] = "<script>alert(1)</script>"
    html = render("report.html.j2", nasty)
    assert "<x-inj" not in html and "<script>alert(1)</script>" not in html
    assert html.count("<script") == 1
    dom = parse_html(html).root
    row = dom.find_all("tr", cls="ctl")[0]
    assert row.find("p", cls="reason").text() == "<script>alert(1)</script>"
    assert row.attrs["data-host"] == report["hosts"][0]["host"] + INJECTED
    assert row.attrs["data-title"] == report["hosts"][0]["controls"][0]["title"] + INJECTED
    xml = render("junit.xml.j2", nasty)
    assert "<x-inj" not in xml
    root = ET.fromstring(xml.encode())
    assert root.find("testsuite").get("name") == report["hosts"][0]["host"] + INJECTED


def test_a_minimal_report_renders(report):
    minimal = {
        "schema": "kvmsec.hardening/report/1", "generated": "2026-12-01T22:10:00Z", "mode": "audit",
        "collection_version": "0.1.0", "severities": report["severities"], "statuses": report["statuses"],
        "gate": {"severity": "low", "passed": True, "failing": []},
        "totals": dict((s, 1 if s == "pass" else 0) for s in report["statuses"]),
        "catalogue": [{"id": "KVM-HOST-01", "title": "t", "severity": "high", "family": None}],
        "hosts": [{"host": "h1", "summary": dict((s, 1 if s == "pass" else 0) for s in report["statuses"]),
                   "gate_failing": [], "facts": {},
                   "controls": [{"id": "KVM-HOST-01", "title": "t", "severity": "high", "family": None,
                                 "role": "kvm_host", "task_file": "roles/kvm_host/tasks/host.yml",
                                 "status": "pass", "reason": "nothing would change", "evidence": [],
                                 "remediation": "", "waiver": None, "references": []}]}],
        "changes": None,
    }
    dom = parse_html(render("report.html.j2", minimal)).root
    assert dom.find("tr", cls="ctl").attrs["data-status"] == "pass"
    assert not dom.find_all("dl", cls="facts")
    root = ET.fromstring(render("junit.xml.j2", minimal).encode())
    assert root.get("tests") == "1" and root.find("testsuite/testcase") is not None
