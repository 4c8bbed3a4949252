# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edit auditd's own configuration, auditd.conf. Private to the collection.

auditd reads ``keyword = value`` lines, ``#`` comment lines and blank lines, and refuses the
whole file for one line it cannot read: an unknown keyword or a bad action makes a reload keep
the old settings and a boot start no auditd at all - no records, on the host whose records
matter most. So a keyword must be one of auditd.conf(5) or already in the file (a newer auditd's
own), an action one of its choices, and a value one line; anything else is refused naming the
setting before anything is written. Actions are compared as auditd reads them, without regard
to case (``SYSLOG`` is ``syslog``), so a file in either spelling is no change.

Edits keep every other line byte for byte; a setting is rewritten where it stands (a repeated
one where it first stands, the repeats removed), a new one goes at the end, and one given as
``None`` is removed so auditd's built-in default applies.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

# auditd.conf(5) of audit 3.0 and 3.1
KEYWORDS = (
    "action_mail_acct", "admin_space_left", "admin_space_left_action", "disk_error_action",
    "disk_full_action", "distribute_network", "enable_krb5", "end_of_event_timeout", "flush", "freq",
    "krb5_key_file", "krb5_principal", "local_events", "log_file", "log_format", "log_group",
    "max_log_file", "max_log_file_action", "max_restarts", "name", "name_format", "num_logs",
    "overflow_action", "plugin_dir", "priority_boost", "q_depth", "space_left", "space_left_action",
    "tcp_client_max_idle", "tcp_client_ports", "tcp_listen_port", "tcp_listen_queue",
    "tcp_max_per_addr", "transport", "use_libwrap", "verify_email", "write_logs",
)
_SPACE_ACTIONS = ("ignore", "syslog", "rotate", "email", "exec", "suspend", "single", "halt")
ACTIONS = {
    "space_left_action": _SPACE_ACTIONS,
    "admin_space_left_action": _SPACE_ACTIONS,
    "disk_full_action": ("ignore", "syslog", "rotate", "exec", "suspend", "single", "halt"),
    "disk_error_action": ("ignore", "syslog", "exec", "suspend", "single", "halt"),
    "max_log_file_action": ("ignore", "syslog", "suspend", "rotate", "keep_logs"),
    "overflow_action": ("ignore", "syslog", "suspend", "single", "halt"),
}
# what each keyword takes (auditd.conf(5) and the parsers of auditd-config.c): a number in a
# range, yes/no, one of some words, a path or a single word; a value auditd would split into two
# words is refused for every keyword that has no second word
INT_MAX = 2147483647
NUMBERS = {
    "num_logs": (0, 999), "freq": (0, INT_MAX), "priority_boost": (0, INT_MAX), "max_log_file": (0, INT_MAX),
    "q_depth": (1, INT_MAX), "max_restarts": (0, INT_MAX), "end_of_event_timeout": (1, INT_MAX),
    "tcp_listen_port": (1, 65535), "tcp_listen_queue": (1, INT_MAX), "tcp_max_per_addr": (1, 1024),
    "tcp_client_max_idle": (0, INT_MAX),
}
# a number of megabytes, or a percentage of the log partition
SPACE = ("space_left", "admin_space_left")
YES_NO = ("local_events", "write_logs", "verify_email", "use_libwrap", "enable_krb5", "distribute_network")
WORDS = {
    "log_format": ("raw", "enriched", "nolog"),
    "flush": ("none", "incremental", "incremental_async", "data", "sync"),
    "name_format": ("none", "hostname", "fqd", "numeric", "user"),
    "transport": ("tcp", "krb5"),
}
PATHS = ("log_file", "plugin_dir", "krb5_key_file")
UNIT = "auditd.service"
LINE_RE = re.compile(r"^[ \t]*([A-Za-z0-9_]+)[ \t]*=[ \t]*(.*?)[ \t\r]*$")


class AuditdConfError(Exception):
    """The file cannot be read, or a setting cannot be written: says which and why."""


class Setting(object):
    """One ``keyword = value`` line and the span of text it owns."""

    def __init__(self, name, value, start, end):
        self.name = name
        self.value = value
        self.start = start
        self.end = end


def parse(text):
    """The file's settings in order; AuditdConfError naming the line auditd would refuse."""
    settings = []
    start = 0
    for number, line in enumerate(text.splitlines(True), 1):
        end = start + len(line)
        body = line.strip()
        if body and not body.startswith("#"):
            match = LINE_RE.match(line.rstrip("\n"))
            if not match:
                raise AuditdConfError("line %d: %r is not keyword = value; auditd refuses the file"
                                      % (number, body))
            settings.append(Setting(match.group(1), match.group(2), start, end))
        start = end
    return settings


def values(text):
    """{keyword: value} as auditd reads them: a later line overrides an earlier one."""
    return dict((setting.name, setting.value) for setting in parse(text))


def normalize(name, value, known):
    """The value as written for one setting, or AuditdConfError naming the setting."""
    if name not in KEYWORDS and name not in known:
        raise AuditdConfError("settings.%s: auditd.conf(5) has no keyword %s, and auditd refuses a file "
                              "with one it does not know; valid: %s"
                              % (name, name, ", ".join(sorted(set(KEYWORDS) | set(known)))))
    if value is None:
        return None
    if isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or re.search(r"[\r\n\0]", value):
        raise AuditdConfError("settings.%s: %r is not a value auditd reads: give a number, yes/no or text on "
                              "one line (null removes the setting)" % (name, value))
    value = value.strip()
    if name not in ACTIONS and len(value.split()) > 1:
        raise AuditdConfError("settings.%s: %r is two words; auditd reads only one for %s" % (name, value, name))
    if name in ACTIONS:
        words = value.split()
        action = words[0].lower()
        if action not in ACTIONS[name] or (action == "exec") != (len(words) == 2) or len(words) > 2:
            raise AuditdConfError("settings.%s: %r is not one of auditd's actions for it; valid: %s "
                                  "(exec followed by the absolute path of a program)"
                                  % (name, value, ", ".join(ACTIONS[name])))
        if action == "exec" and not words[1].startswith("/"):
            raise AuditdConfError("settings.%s: exec needs the absolute path of the program, not %r"
                                  % (name, words[1]))
    _check_kind(name, value)
    return value


def _check_kind(name, value):
    """AuditdConfError naming the setting when the value is not of the kind its keyword takes."""
    if name in NUMBERS or name in SPACE:
        low, high = NUMBERS.get(name, (0, INT_MAX))
        number = value[:-1] if name in SPACE and value.endswith("%") else value
        if not number.isdigit() or not low <= int(number) <= high or (number != value and int(number) > 100):
            raise AuditdConfError("settings.%s: %r is not a number from %d to %d%s" % (
                name, value, low, high, " (or a percentage, such as 25%)" if name in SPACE else ""))
    elif name in YES_NO and value.lower() not in ("yes", "no"):
        raise AuditdConfError("settings.%s: %r; valid: yes, no" % (name, value))
    elif name in WORDS and value.lower() not in WORDS[name]:
        raise AuditdConfError("settings.%s: %r; valid: %s" % (name, value, ", ".join(WORDS[name])))
    elif name in PATHS and not value.startswith("/"):
        raise AuditdConfError("settings.%s: %r is not an absolute path" % (name, value))
    elif name == "tcp_client_ports":
        ports = value.split("-")
        if len(ports) > 2 or not all(port.isdigit() and 1 <= int(port) <= 65535 for port in ports) or \
                int(ports[0]) > int(ports[-1]):
            raise AuditdConfError("settings.tcp_client_ports: %r is not a port (1-65535) or a range LOW-HIGH" % value)


def same(name, current, wanted):
    """Whether auditd reads both values alike: actions without regard to case."""
    if current is None or wanted is None:
        return current == wanted
    if name in ACTIONS:
        current_words, wanted_words = current.split(), wanted.split()
        return [current_words[0].lower()] + current_words[1:] == [wanted_words[0].lower()] + wanted_words[1:]
    return current == wanted


def plan(text, settings):
    """(new_text, changes) for settings {keyword: value or None}; nothing is written here.

    changes lists {key, before, after} of every setting that auditd would read differently.
    """
    parsed = parse(text)
    current = values(text)
    known = set(current)
    edits = []
    appended = []
    changes = []
    for name in sorted(settings):
        value = normalize(name, settings[name], known)
        mine = [setting for setting in parsed if setting.name == name]
        if same(name, current.get(name), value) and len(mine) <= 1:
            continue
        changes.append({"key": name, "before": current.get(name), "after": value})
        line = "" if value is None else "%s = %s\n" % (name, value)
        if mine:
            edits.append((mine[0].start, mine[0].end, line))
            edits.extend((setting.start, setting.end, "") for setting in mine[1:])
        else:
            appended.append(line)
    if appended:
        edits.append((len(text), len(text), ("" if not text or text.endswith("\n") else "\n") + "".join(appended)))
    new_text = text
    # from the end backwards, so earlier offsets stay valid
    for start, end, replacement in sorted(edits, key=lambda edit: edit[:2], reverse=True):
        new_text = new_text[:start] + replacement + new_text[end:]
    return new_text, changes


def reload_auditd(run, systemctl):
    """Tell a running auditd to read its configuration; False when it does not run."""
    if not systemctl or run([systemctl, "is-active", "--quiet", UNIT])[0] != 0:
        return False
    rc, stdout, stderr = run([systemctl, "kill", "--kill-whom=main", "--signal=SIGHUP", UNIT])
    if rc != 0:
        raise AuditdConfError("auditd could not be told to read its configuration (exit %d): %s"
                              % (rc, (stderr or stdout).strip()))
    return True


def decide(run, path, settings, reload, systemctl):
    """The plan that sets settings in the file at path, and has a running auditd read it when
    reload is asked for (systemctl: its path, or None where there is none)."""
    if not path or not os.path.isabs(path):
        raise AuditdConfError("path: %r is not an absolute path, such as /etc/audit/auditd.conf" % (path,))
    if not isinstance(settings, dict):
        raise AuditdConfError("settings: %r is not a dictionary of keyword: value" % (settings,))
    try:
        text = _files.read_text(path)
    except (IOError, OSError) as exc:
        raise AuditdConfError("cannot read %s (is auditd installed?): %s" % (path, exc))
    try:
        new_text, changes = plan(text, settings)
    except AuditdConfError as exc:
        raise AuditdConfError("%s: %s" % (path, exc))
    result = dict(path=path, changes=changes, reloaded=[])
    change = _files.FileChange(path, text, new_text) if new_text != text else None

    def apply():
        def told():
            result["reloaded"] = [UNIT] if reload and reload_auditd(run, systemctl) else []

        try:
            _files.write_all([change], told)
        except _files.NotRestored as exc:
            raise AuditdConfError(str(exc))
        except (IOError, OSError) as exc:
            raise AuditdConfError("cannot write %s: %s; it is as it was" % (path, exc.strerror or exc))
        except AuditdConfError as exc:
            raise AuditdConfError("%s; %s is back as it was" % (exc, path))
        return result
    diff = dict(before=text, after=new_text, before_header=path, after_header=path)
    return Plan(change is not None, result, diff, (), apply if change else None)
