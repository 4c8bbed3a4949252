# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Audit rules of the hypervisor: one rules.d file, loaded in the kernel. Private to the collection.

The file is what survives a reboot (augenrules merges /etc/audit/rules.d into audit.rules at
boot); the kernel's loaded rules are what records events now. Both are compared: the file by
its text, the kernel by the number of loaded rules carrying each key of the file, since
``auditctl -l`` prints rules in its own normalised form (``-F key=`` for ``-k``, ``-F perm=``
order, ...), not as written. A rule removed by hand (``auditctl -W``/``-d``) therefore shows as
its key's count falling short. A watch on a path that does not exist on this host (the QEMU
binary of the other distribution, /dev/vfio without VFIO) is left out of the file and reported:
auditctl refuses such a watch and augenrules would then fail the whole file.

A rule may carry several keys (``-k kvm-config -k VIRT``, which ``auditctl -l`` prints as
written, or as ``-F key=`` for syscall rules); each of its keys is counted. A common key added to
every rule lets one ``ausearch -k`` (or ``auditctl -l | grep``) find all of them.

Loading is ``augenrules --load``. With the rules locked in the kernel (``-e 2``, enabled 2) the
kernel refuses every change until the next boot: the file is still written and the reboot is
reported, not forced.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

HEADER = "## Managed by kvmsec.hardening (audit_rules): edits are replaced on the next run\n"
IMMUTABLE_RULE = "-e 2"
KEY = re.compile(r"(?:^|\s)(?:-k\s+|-F\s+key=)(\S+)")
KEY_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,31}$")
WATCH = re.compile(r"^-w\s+(\S+)")
RULE_START = re.compile(r"^-(?:w|a|A)\s")


class AuditRulesError(Exception):
    """The operator's to act on; the host is unchanged (or put back)."""


def check_rules(rules, option="rules"):
    """The rules, stripped; each one watch (-w) or syscall rule (-a/-A) with a key."""
    checked_rules = []
    for index, rule in enumerate(rules):
        rule = (rule or "").strip()
        if "\n" in rule or not RULE_START.match(rule):
            raise AuditRulesError("%s[%d]: %r is not one audit rule starting with -w (a watch) or -a "
                                  "(a syscall rule); control rules such as -D, -b and -e belong to "
                                  "the distribution's rules (use immutable for -e 2)" % (option, index, rule))
        if not KEY.search(rule):
            raise AuditRulesError("%s[%d]: %r has no key: add -k NAME (or -F key=NAME), which the "
                                  "records carry and which is how the loaded rules are compared"
                                  % (option, index, rule))
        checked_rules.append(rule)
    return checked_rules


def watch_rules(watches, option="watches"):
    """Watch rules (-w PATH -p PERMISSIONS -k KEY) from {path, permissions, key} items."""
    rules = []
    for index, watch in enumerate(watches):
        path, permissions, key = (watch.get(name) for name in ("path", "permissions", "key"))
        if not isinstance(path, str) or not path.startswith("/") or re.search(r"\s", path):
            raise AuditRulesError("%s[%d].path: %r is not an absolute path without spaces" % (option, index, path))
        if not permissions or not re.match(r"^[rwxa]+$", str(permissions)):
            raise AuditRulesError("%s[%d].permissions: %r is not a combination of r, w, x and a (read, "
                                  "write, execute, attribute change)" % (option, index, permissions))
        if not key or not KEY_NAME.match(str(key)):
            raise AuditRulesError("%s[%d].key: %r is not a key of 1 to 31 letters, digits, '_', '.', ':' "
                                  "or '-'" % (option, index, key))
        rules.append("-w %s -p %s -k %s" % (path, permissions, key))
    return rules


def with_common_key(rules, key, option="common_key"):
    """The rules, each also carrying key (once) when key is given."""
    if not key:
        return list(rules)
    if not KEY_NAME.match(str(key)):
        raise AuditRulesError("%s: %r is not a key of 1 to 31 letters, digits, '_', '.', ':' or '-'" % (option, key))
    return [rule if key in KEY.findall(rule) else "%s -k %s" % (rule, key) for rule in rules]


def key_counts(rules):
    counts = {}
    for rule in rules:
        for key in set(KEY.findall(rule)):
            counts[key] = counts.get(key, 0) + 1
    return counts


def parse_status(text):
    """{'enabled': int or None, 'pid': int or None} from ``auditctl -s``."""
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("enabled", "pid"):
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return dict(enabled=values.get("enabled"), pid=values.get("pid"))


def render(rules):
    return HEADER + "".join(rule + "\n" for rule in rules)


class Needed(object):
    """What the host lacks, read before anything is written: files, keys, the load or reboot."""

    def __init__(self):
        self.files = []           # _files.FileChange
        self.skipped = []         # rules whose watched path does not exist
        self.missing_keys = {}    # key: (wanted, loaded)
        self.wanted_keys = {}     # key: rules of the file carrying it
        self.load = False
        self.reboot_required = False
        self.status = {}


def plan(root, rules, path, immutable_path, immutable, loaded_text, status_text):
    """What it takes for the file to hold the rules (and the lock when immutable) and the kernel
    to have them loaded. loaded_text and status_text are ``auditctl -l`` and ``auditctl -s``."""
    result = Needed()
    kept = []
    for rule in rules:
        watch = WATCH.match(rule)
        if watch and not os.path.lexists(os.path.join(root, watch.group(1).lstrip("/"))):
            result.skipped.append(rule)
        else:
            kept.append(rule)
    wanted = [(path, render(kept)), (immutable_path, render([IMMUTABLE_RULE]) if immutable else None)]
    changes = [_files.change_to(file_path, after, _files.PRIVATE) for file_path, after in wanted]
    result.files = [change for change in changes if change]
    loaded = [line.strip() for line in loaded_text.splitlines() if RULE_START.match(line.strip())]
    have = key_counts(loaded)
    result.wanted_keys = key_counts(kept)
    for key, count in sorted(result.wanted_keys.items()):
        if have.get(key, 0) < count:
            result.missing_keys[key] = (count, have.get(key, 0))
    result.status = parse_status(status_text)
    if result.status["pid"] in (None, 0):
        raise AuditRulesError("auditd is not running on this host (auditctl -s: pid %s): start and enable "
                              "auditd first, the kernel's records are lost without it" % result.status["pid"])
    lock_wanted = immutable and result.status["enabled"] != 2
    if result.files or result.missing_keys or lock_wanted:
        if result.status["enabled"] == 2:
            result.reboot_required = True
        else:
            result.load = True
    return result


def changed(result):
    return bool(result.files or result.load)


def diff(result):
    diffs = [change.diff() for change in result.files]
    if result.missing_keys:
        diffs.append(dict(
            before="".join("%s: %d rules loaded\n" % (key, loaded) for key, (_w, loaded) in sorted(result.missing_keys.items())),
            after="".join("%s: %d rules loaded\n" % (key, wanted) for key, (wanted, _l) in sorted(result.missing_keys.items())),
            before_header="audit rules in the kernel (before)", after_header="audit rules in the kernel (after)"))
    return diffs


def warnings(result):
    notes = []
    if result.reboot_required:
        notes.append("the audit rules are locked in the kernel (-e 2): the changed rules apply after the "
                     "next boot; reboot the host to load them")
    return notes


def apply(result, run, loaded):
    """Write the files and load them; put the files back and load those on a failure.

    loaded(): the ``auditctl -l`` text after the load, to prove the kernel has every key."""
    attempted = []

    def load():
        if not result.load:
            return
        attempted.append("augenrules")
        checked(run, ["augenrules", "--load"], what="augenrules --load")
        have = key_counts(line.strip() for line in loaded().splitlines())
        short = [key for key in result.wanted_keys if have.get(key, 0) < result.wanted_keys[key]]
        if short:
            raise AuditRulesError("the kernel did not load the rules of key %s after augenrules --load"
                                  % ", ".join(short))

    try:
        _files.write_all(result.files, load)
    except (_files.NotRestored, AuditRulesError, CommandError, IOError, OSError) as exc:
        if attempted:
            # the files are back: the kernel gets what they held before
            try:
                checked(run, ["augenrules", "--load"], what="augenrules --load")
            except CommandError:
                pass
        if isinstance(exc, _files.NotRestored):
            raise AuditRulesError(str(exc))
        raise AuditRulesError("%s; the rules files are back as they were" % exc)


def decide(run, watches, rules, path, immutable_path, immutable, root="/", common_key=None):
    """The plan that leaves the rules (each with common_key too, when given) in the file at path
    (and the lock in immutable_path when immutable) and loaded in the kernel."""
    for option, value in (("path", path), ("immutable_path", immutable_path)):
        if not value or not os.path.isabs(value) or not value.endswith(".rules") or re.search(r"\s", value):
            raise AuditRulesError("%s: %r must be an absolute path without spaces ending in .rules (augenrules "
                                  "reads nothing else), such as /etc/audit/rules.d/kvm.rules" % (option, value))
    wanted = with_common_key(watch_rules(watches) + check_rules(rules), common_key)

    def auditctl(flag):
        try:
            return checked(run, ["auditctl", flag], what="auditctl %s" % flag)
        except CommandError as exc:
            raise AuditRulesError(str(exc))

    found = plan(root, wanted, path, immutable_path, immutable, auditctl("-l"), auditctl("-s"))
    result = dict(path=path, missing=found.skipped, reboot_required=found.reboot_required,
                  unloaded_keys=dict((key, dict(wanted=count, loaded=loaded))
                                     for key, (count, loaded) in found.missing_keys.items()))
    apply_ = (lambda: apply(found, run, lambda: auditctl("-l"))) if changed(found) else None
    return Plan(changed(found), result, diff(found), warnings(found), apply_)
