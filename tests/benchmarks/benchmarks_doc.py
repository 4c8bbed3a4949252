"""The one writer of docs/benchmarks.md: each benchmark script owns one marked section."""

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def write_section(name, body):
    """Replace the section of benchmark ``name`` with ``body``, or append it when it is new."""
    begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
    section = "%s\n%s\n%s" % (begin, body.strip("\n"), end)
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + section + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(doc)
