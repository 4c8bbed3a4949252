# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edit libvirt's configuration files (qemu.conf, libvirtd.conf, ...). Private to the collection.

libvirt reads these files with its own parser (``src/util/virconf.c``), not as INI files:
``name = value`` statements ended by a newline or ``;``, ``#`` comments, and values that are
integers, strings in double or single quotes (or triple double quotes, across lines) and lists
in square brackets that may span lines and hold comments. A line editor cannot replace a list
safely, so this module parses the file, edits whole statements, re-parses the result and checks
that every setting reads back as asked before anything is written.

What is written is also what libvirt can *use*: its parser reads numbers into a ``long long``
without an overflow check (a larger number silently wraps), and the daemons read every list
setting as a list of strings (a nested list or a number in a list makes the daemon refuse the
whole file). So only signed 64-bit integers, one-line strings and flat lists of strings are
written; anything else is refused naming the setting.

Edits keep everything else byte for byte: comments, blank lines, the order of statements. A new
setting goes right after libvirt's commented-out example of it (``#security_driver = "selinux"``)
when the file has one, else at the end. A setting given as ``None`` is removed, so libvirt's
built-in default applies again. Values of secret settings (the names the caller marks, and
names that look like passwords) are masked in everything returned for display.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

# virConfParseName without the LXC and VMX flags, which the daemons' files are read without
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
SECRET_RE = re.compile(r"passw|secret", re.I)
MASK = "********"
LLONG_MIN, LLONG_MAX = -(1 << 63), (1 << 63) - 1
VALID = ("valid: an integer from %d to %d, a boolean (written as 1 or 0), a string on one line, "
         "or a flat list of such strings" % (LLONG_MIN, LLONG_MAX))
KINDS = ((bool, "a boolean"), (int, "an integer"), (float, "a decimal number"), (str, "a string"),
         (list, "a list"), (tuple, "a list"), (dict, "a dictionary"), (type(None), "null"))


class ConfError(Exception):
    """The file cannot be parsed, or a requested value cannot be written: says where and why."""


class Statement(object):
    """One ``name = value`` statement and the span of text it owns (whole lines)."""

    def __init__(self, name, value, start, end, line):
        self.name = name
        self.value = value
        self.start = start
        self.end = end
        self.line = line


class _Parser(object):
    def __init__(self, text):
        self.text = text
        self.pos = 0

    # ------------------------------------------------------------ low level

    def error(self, message):
        line = self.text.count("\n", 0, self.pos) + 1
        raise ConfError("line %d: %s" % (line, message))

    def peek(self):
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_blanks(self):
        while self.peek() in (" ", "\t", "\r") and self.peek():
            self.pos += 1

    def skip_comment(self):
        if self.peek() == "#":
            newline = self.text.find("\n", self.pos)
            self.pos = len(self.text) if newline < 0 else newline

    def skip_space_in_list(self):
        """Inside a list: blanks, newlines and comments are all separators."""
        while True:
            self.skip_blanks()
            if self.peek() == "#":
                self.skip_comment()
            elif self.peek() == "\n":
                self.pos += 1
            else:
                return

    # ------------------------------------------------------------ values

    def parse_value(self):
        char = self.peek()
        if char == "[":
            return self.parse_list()
        if char in ("'", '"'):
            return self.parse_string()
        if char in ("+", "-") or char.isdigit():
            return self.parse_number()
        self.error("expected a value (a number, a quoted string or a [list])")
        return None

    def parse_number(self):
        match = re.compile(r"[+-]?[0-9]+").match(self.text, self.pos)
        if not match:
            self.error("expected a number")
        self.pos = match.end()
        return int(match.group(0))

    def parse_string(self):
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                self.error('string opened with """ is never closed')
            value = self.text[self.pos + 3:end]
            self.pos = end + 3
            return value
        quote = self.peek()
        end = self.pos + 1
        # libvirt ends a quoted string at a carriage return too (IS_EOL)
        while end < len(self.text) and self.text[end] not in (quote, "\n", "\r"):
            end += 1
        if end >= len(self.text) or self.text[end] != quote:
            self.error("string opened with %s is not closed on the same line" % quote)
        value = self.text[self.pos + 1:end]
        self.pos = end + 1
        return value

    def parse_list(self):
        self.pos += 1
        values = []
        self.skip_space_in_list()
        while self.peek() != "]":
            if not self.peek():
                self.error("list is never closed with ]")
            values.append(self.parse_value())
            self.skip_space_in_list()
            if not self.peek():
                self.error("list is never closed with ]")
            if self.peek() == ",":
                self.pos += 1
                self.skip_space_in_list()
            elif self.peek() != "]":
                self.error("expected , or ] in a list")
        self.pos += 1
        return values

    # ------------------------------------------------------------ statements

    def parse_statement(self, line_start):
        match = NAME_RE.match(self.text, self.pos)
        if not match:
            self.error("expected a setting name")
        name = match.group(0)
        line = self.text.count("\n", 0, self.pos) + 1
        self.pos = match.end()
        self.skip_blanks()
        if self.peek() != "=":
            self.error("expected = after %s" % name)
        self.pos += 1
        self.skip_blanks()
        value = self.parse_value()
        self.skip_blanks()
        if self.peek() == ";":
            self.pos += 1
            self.skip_blanks()
            if self.peek() not in ("#", "\n", ""):
                # "a = 1; b = 2": the next statement starts on the same line
                return Statement(name, value, line_start, self.pos, line)
        self.skip_comment()
        if self.peek() not in ("\n", ""):
            self.error("unexpected text after the value of %s" % name)
        if self.peek() == "\n":
            self.pos += 1
        return Statement(name, value, line_start, self.pos, line)

    def parse(self):
        statements = []
        while self.pos < len(self.text):
            line_start = self.pos
            self.skip_blanks()
            self.skip_comment()
            if self.peek() == "\n":
                self.pos += 1
            elif self.peek():
                statements.append(self.parse_statement(line_start))
        return statements


def parse(text):
    """Return the file's statements in order; raise ConfError (with the line) on bad syntax."""
    return _Parser(text).parse()


def values(text):
    """Settings as libvirt reads them: the first statement of each name wins."""
    result = {}
    for statement in parse(text):
        result.setdefault(statement.name, statement.value)
    return result


def split_secrets(settings, secret_settings):
    """Merge plain and secret settings; secrets must come through the secret channel."""
    leaked = sorted(name for name, value in settings.items()
                    if SECRET_RE.search(name) and value is not None)
    if leaked:
        raise ConfError("%s look like secrets: give them in secret_settings so that their values "
                        "stay out of logs and results" % ", ".join(leaked))
    both = sorted(set(settings) & set(secret_settings))
    if both:
        raise ConfError("%s given both as setting and as secret setting" % ", ".join(both))
    merged = dict(settings)
    merged.update(secret_settings)
    return merged, tuple(secret_settings)


def _kind(value):
    return next((kind for cls, kind in KINDS if isinstance(value, cls)), "a " + type(value).__name__)


def _string(name, value):
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfError("%s: a string may not hold a newline, a carriage return or a NUL character, where "
                        "libvirt's parser ends it; %s" % (name, VALID))
    if '"' in value and "'" in value:
        raise ConfError("%s: a string may not hold both kinds of quote (libvirt's strings have no "
                        "escapes); %s" % (name, VALID))
    return value


def normalize(name, value, secret_names=()):
    """Turn an Ansible value into what libvirt's parser would read back; refuse the rest.

    Messages name the setting and what is wrong; they never show a secret setting's value.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not LLONG_MIN <= value <= LLONG_MAX:
            raise ConfError("%s: %s is out of range: libvirt reads numbers as signed 64-bit integers and "
                            "would silently wrap it; %s" % (name, display(name, value, secret_names), VALID))
        return value
    if isinstance(value, str):
        return _string(name, value)
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfError("%s: item %d of the list is %s: libvirt reads list settings as lists of "
                                "strings and refuses the whole file otherwise; give a flat list of strings, "
                                "such as [\"/dev/null\", \"/dev/zero\"]" % (name, index + 1, _kind(item)))
        return [_string(name, item) for item in value]
    raise ConfError("%s: %s is not a value libvirt's configuration files hold; %s" % (name, _kind(value), VALID))


def render_value(value):
    if isinstance(value, list):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    if isinstance(value, int):
        return str(value)
    return "'%s'" % value if '"' in value else '"%s"' % value


def render(name, value):
    return "%s = %s\n" % (name, render_value(value))


def leaked_secret_values(settings):
    """The values, as text, of secret-looking settings given among the plain ones: what must stay
    out of every log even though the request is refused (``split_secrets``)."""
    found = set()
    for name, value in settings.items():
        if is_secret(name) and value is not None:
            found.update(leaves(value))
    return found


def leaves(value):
    """Every scalar inside a value as text, as Ansible's no_log collects them."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return set().union(*[leaves(item) for item in value]) if value else set()
    # true and false are nobody's secret, and hiding them would blank them out of all output
    return set() if isinstance(value, bool) or value is None else {str(value)}


def is_secret(name, secret_names=()):
    return name in secret_names or bool(SECRET_RE.search(name))


def display(name, value, secret_names=()):
    """A value as shown in results and diffs: secrets masked."""
    return MASK if is_secret(name, secret_names) and value is not None else value


def _example_end(text, name):
    """Offset just after libvirt's commented-out example of name, or None.

    A commented list example runs until its commented closing bracket, so the new statement
    lands after the whole example rather than inside it.
    """
    # "#name = ..." is libvirt's example; "#    name = ..." is prose in the comment above it
    match = re.compile(r"^#%s[ \t]*=(.*)$" % re.escape(name), re.M).search(text) or \
        re.compile(r"^#[ \t]*%s[ \t]*=(.*)$" % re.escape(name), re.M).search(text)
    if not match:
        return None
    end = match.end()
    if "[" in match.group(1) and "]" not in match.group(1):
        closing = re.compile(r"^#.*\].*$", re.M).search(text, end)
        if closing:
            end = closing.end()
    return end + 1 if end < len(text) else end


def _edits_for(text, statements, name, value):
    """The (start, end, replacement) edits that make name = value; [] when already so."""
    mine = [s for s in statements if s.name == name]
    if value is None:
        return [(s.start, s.end, "") for s in mine]
    if mine:
        if mine[0].value == value and len(mine) == 1:
            return []
        return [(mine[0].start, mine[0].end, render(name, value))] + \
            [(s.start, s.end, "") for s in mine[1:]]
    where = _example_end(text, name)
    if where is None:
        where = len(text)
        prefix = "" if not text or text.endswith("\n") else "\n"
        return [(where, where, prefix + render(name, value))]
    prefix = "" if text[where - 1:where] == "\n" else "\n"
    return [(where, where, prefix + render(name, value))]


def plan(text, settings, secret_names=()):
    """Compute the new text for settings {name: value or None}.

    Returns (new_text, changes) where changes lists {key, before, after} for every setting that
    differs, with the values of secret settings (``secret_names`` and password-like names)
    masked. Raises ConfError on a malformed file or value; nothing is written here.
    """
    statements = parse(text)
    current = values(text)
    edits = []
    changes = []
    for name in sorted(settings):
        if not NAME_RE.fullmatch(name):
            raise ConfError("%r is not a valid setting name: libvirt reads a letter followed by letters, "
                            "digits and _" % name)
        value = None if settings[name] is None else normalize(name, settings[name], secret_names)
        found = _edits_for(text, statements, name, value)
        if found:
            edits.extend(found)
            changes.append({"key": name, "before": display(name, current.get(name), secret_names),
                            "after": display(name, value, secret_names)})
    new_text = text
    # from the end backwards, so earlier offsets stay valid; insertions at one place keep
    # their order
    ordered = sorted(enumerate(edits), key=lambda item: (item[1][0], item[1][1], item[0]), reverse=True)
    for dummy, (start, end, replacement) in ordered:
        new_text = new_text[:start] + replacement + new_text[end:]
    _verify(new_text, settings, secret_names)
    return new_text, changes


def _verify(new_text, settings, secret_names):
    """Re-read the edited text as libvirt would; every setting must read back exactly."""
    try:
        result = values(new_text)
    except ConfError as exc:
        raise ConfError("the edited file would not parse (%s); nothing was written" % exc)
    for name, value in settings.items():
        expected = None if value is None else normalize(name, value, secret_names)
        if result.get(name) != expected:
            raise ConfError("%s would read back as %r instead of %r; nothing was written"
                            % (name, display(name, result.get(name), secret_names),
                               display(name, expected, secret_names)))


def masked(text, secret_names=()):
    """The text with the values of secret settings replaced, for diffs."""
    try:
        statements = parse(text)
    except ConfError:
        return text
    for statement in reversed(statements):
        if is_secret(statement.name, secret_names):
            text = text[:statement.start] + "%s = %s\n" % (statement.name, MASK) + text[statement.end:]
    return text


def decide(path, settings, secret_settings, backup=None):
    """The plan that gives the file at path the settings (secret_settings: those whose values
    are masked in everything shown); backup(path), when given, copies the file before it changes
    and returns the copy's name."""
    if not path or not os.path.isabs(path):
        raise ConfError("path: %r is not an absolute path, such as /etc/libvirt/qemu.conf" % (path,))
    try:
        settings, secret_names = split_secrets(settings, secret_settings)
        text = _files.read_text(path)
        new_text, changes = plan(text, settings, secret_names)
    except ConfError as exc:
        raise ConfError("%s: %s" % (path, exc))
    except (IOError, OSError) as exc:
        raise ConfError("cannot read %s (is libvirt installed?): %s" % (path, exc))
    result = dict(path=path, changes=changes)
    diff = dict(before=masked(text, secret_names), after=masked(new_text, secret_names),
                before_header=path, after_header=path)
    change = _files.FileChange(path, text, new_text) if new_text != text else None

    def apply():
        if backup is not None:
            result["backup_file"] = backup(path)
        try:
            _files.write_all([change])
        except (IOError, OSError) as exc:
            raise ConfError("cannot write %s: %s; it is as it was" % (path, exc.strerror or exc))
        return result
    return Plan(change is not None, result, diff, (), apply if change else None)
