# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SELinux booleans and file context rules of a KVM host. Private to the collection.

The wanted state is compared with the policy store (libsemanage) and the running kernel
(libselinux); ``decide`` returns the plan, and applying it changes the store in **one**
libsemanage transaction, which commits whole or not at all - one policy rebuild for every
boolean and rule, where ``setsebool -P`` or ``semanage`` per item pays one each. Values that
differ only in the running kernel (a ``setsebool`` without ``-P``) are set there alone, with no
rebuild. What exists under a directory whose rule changed, or whose files carry other labels
than the rules give them, is relabelled with restorecon.

``SemanageStore`` is the only code that touches the bindings; the planning below works on the
plain values it returns, which is what the unit tests give it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import tempfile

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

RULE_SUFFIX = "(/.*)?"
# a directory is matched literally except for '.', which also matches itself
REGEX_CHARACTERS = re.compile(r"[][(){}*+?|^$\\\s]")
RELABEL_LINE = re.compile(r"^(?:Would relabel|Relabeled) (.+) from (\S+) to (\S+)$")
SHOWN_RELABELS = 50


class SelinuxSettingsError(Exception):
    """The operator's to act on; the host is unchanged (or put back)."""


def on_off(value):
    return "on" if value else "off"


def rule_expression(path):
    return path.rstrip("/") + RULE_SUFFIX


def check_booleans(booleans):
    """{name: bool} of the option's names and values (true/false, on/off, yes/no, 1/0)."""
    checked_booleans = {}
    for name, value in booleans.items():
        if not re.match(r"^[A-Za-z0-9_]+$", name):
            raise SelinuxSettingsError("booleans: %r is not a boolean name (letters, digits and _)" % name)
        try:
            checked_booleans[name] = boolean(value, strict=True)
        except TypeError:
            raise SelinuxSettingsError("booleans.%s: %r is not a boolean value: give true or false "
                                       "(on/off, yes/no, 1/0)" % (name, value))
    return checked_booleans


def check_file_contexts(entries):
    """[(path, setype)] of the image directories, in the order given."""
    wanted, seen = [], set()
    for index, entry in enumerate(entries):
        path, setype = entry["path"], entry["setype"]
        where = "file_contexts[%d].path" % index
        if not path.startswith("/") or path.rstrip("/") == "":
            raise SelinuxSettingsError("%s: %r is not an absolute directory below /" % (where, path))
        if REGEX_CHARACTERS.search(path):
            raise SelinuxSettingsError(
                "%s: %r holds a space or a regular expression character: give the directory as a "
                "plain path (the rule %s is made from it)" % (where, path, rule_expression("PATH")))
        if not re.match(r"^[a-z0-9_]+_t$", setype):
            raise SelinuxSettingsError(
                "file_contexts[%d].setype: %r is not an SELinux type (for example virt_image_t)" % (index, setype))
        path = path.rstrip("/")
        if path in seen:
            raise SelinuxSettingsError("%s: %s is listed twice" % (where, path))
        seen.add(path)
        wanted.append((path, setype))
    return wanted


class Settings(object):
    """The changes one run makes; empty lists when the host already agrees."""

    def __init__(self):
        self.persistent = []     # booleans whose value at boot changes (and at runtime with it)
        self.runtime = []        # booleans that differ only in the running kernel
        self.skipped = []        # booleans this host's policy does not have
        self.rules = []          # file context rules added or changed
        self.relabel = []        # restorecon -n lines, or the directories a new rule relabels
        self.relabel_paths = []  # existing directories restorecon runs over


def plan_booleans(store, booleans, settings):
    policy, runtime = store.booleans(), store.runtime_booleans()
    for name in sorted(booleans):
        value = booleans[name]
        if name not in policy:
            settings.skipped.append(name)
            continue
        change = dict(name=name, value=value, persistent=policy[name], runtime=runtime.get(name))
        if policy[name] != value:
            settings.persistent.append(change)
        elif name in runtime and runtime[name] != value:
            settings.runtime.append(change)


def plan_file_contexts(store, run, directories, relabel, settings):
    rules = store.file_contexts([rule_expression(path) for path, dummy in directories])
    changed_paths = set()
    for path, setype in directories:
        expression = rule_expression(path)
        current = rules.get(expression)
        if current is None or current[0] != setype:
            settings.rules.append(dict(path=path, expression=expression, setype=setype,
                                       before=current[0] if current else None,
                                       local=bool(current and current[1])))
            changed_paths.add(path)
    if not relabel:
        return
    settings.relabel_paths = [path for path, dummy in directories if os.path.isdir(path)]
    # restorecon -n answers from the rules in place: a directory whose rule is still to be
    # written is relabelled as a whole once it is
    unchanged = [path for path in settings.relabel_paths if path not in changed_paths]
    if unchanged:
        settings.relabel.extend(restorecon(run, unchanged, dry_run=True))
    settings.relabel.extend("%s (its rule changes)" % path for path in settings.relabel_paths
                            if path in changed_paths)
    if not settings.relabel and not changed_paths:
        settings.relabel_paths = []


def restorecon(run, paths, dry_run):
    argv = ["restorecon", "-R", "-v"] + (["-n"] if dry_run else []) + ["--"] + list(paths)
    try:
        output = checked(run, argv, what="restorecon")
    except CommandError as exc:
        raise SelinuxSettingsError(str(exc))
    return [line.strip() for line in output.splitlines() if line.strip()]


def relabelled(lines):
    """Result records of restorecon's lines: path, before, after (None when not a relabel line)."""
    records = []
    for line in lines[:SHOWN_RELABELS]:
        match = RELABEL_LINE.match(line)
        records.append(dict(zip(("path", "before", "after"), match.groups())) if match
                       else dict(path=line, before=None, after=None))
    return records


def changed_booleans(settings):
    return sorted(settings.persistent + settings.runtime, key=lambda change: change["name"])


def describe(settings):
    """(before, after) text of the diff."""
    before, after = [], []
    for change in changed_booleans(settings):
        before.append("boolean %s: %s now, %s at boot" % (
            change["name"], on_off(change["runtime"]), on_off(change["persistent"])))
        after.append("boolean %s: %s now, %s at boot" % (
            change["name"], on_off(change["value"]), on_off(change["value"])))
    for rule in settings.rules:
        before.append("fcontext %s: %s" % (rule["expression"], rule["before"] or "no rule"))
        after.append("fcontext %s: %s" % (rule["expression"], rule["setype"]))
    after.extend("relabel %s" % line for line in settings.relabel[:SHOWN_RELABELS])
    if len(settings.relabel) > SHOWN_RELABELS:
        after.append("relabel ... %d more" % (len(settings.relabel) - SHOWN_RELABELS))
    return "".join(line + "\n" for line in before), "".join(line + "\n" for line in after)


def result_of(settings, transaction, relabel_lines):
    return dict(
        booleans=[dict(name=c["name"], value=c["value"], runtime=c["runtime"], persistent=c["persistent"])
                  for c in changed_booleans(settings)],
        missing=settings.skipped,
        file_contexts=[dict((key, rule[key]) for key in ("path", "expression", "setype", "before"))
                       for rule in settings.rules],
        relabelled=relabelled(relabel_lines),
        relabelled_count=len(relabel_lines),
        transaction=transaction,
    )


def decide(store, run, booleans, file_contexts, relabel=True):
    """The plan for booleans ({name: bool}) and file_contexts ([(path, setype)]) on this host."""
    settings = Settings()
    plan_booleans(store, booleans, settings)
    for path, setype in file_contexts:
        if not store.valid_type(setype):
            raise SelinuxSettingsError(
                "file_contexts: setype %s for %s is not a type of this host's policy "
                "(virt_image_t is the one libvirt labels guest images with)" % (setype, path))
    plan_file_contexts(store, run, file_contexts, relabel, settings)

    changed = bool(settings.persistent or settings.runtime or settings.rules or settings.relabel)
    before, after = describe(settings)
    diff = dict(before=before, after=after, before_header="SELinux booleans and file contexts (before)",
                after_header="SELinux booleans and file contexts (after)")

    def apply():
        committed = apply_settings(store, settings)
        lines = restorecon(run, settings.relabel_paths, dry_run=False) if settings.relabel_paths else []
        return result_of(settings, committed, lines)

    return Plan(changed, result_of(settings, False, settings.relabel), diff, (),
                apply if changed else None)


def apply_settings(store, settings):
    """One store transaction, then the runtime-only values; a runtime value that cannot be set
    puts back the runtime values already set and the store. True when a transaction committed."""
    committed = False
    if settings.persistent or settings.rules:
        store.commit(dict((c["name"], c["value"]) for c in settings.persistent),
                     [(rule["expression"], rule["setype"]) for rule in settings.rules])
        committed = True
    done = []
    try:
        for change in settings.runtime:
            store.set_runtime(change["name"], change["value"])
            done.append(change)
    except SelinuxSettingsError:
        for change in done:
            store.set_runtime(change["name"], change["runtime"])
        if committed:
            store.commit(dict((c["name"], c["persistent"]) for c in settings.persistent),
                         [(rule["expression"], rule["before"] if rule["local"] else None)
                          for rule in settings.rules])
        raise
    return committed


class SemanageStore(object):
    """The policy store through libsemanage, the running kernel through libselinux."""

    def __init__(self, semanage, selinux, write):
        self.semanage, self.selinux = semanage, selinux
        handle = semanage.semanage_handle_create()
        if not handle or not semanage.semanage_is_managed(handle):
            raise SelinuxSettingsError(
                "this host's SELinux policy store is not managed or cannot be found: install a policy "
                "(Debian: selinux-policy-default) or run the kvmsec.hardening.selinux role")
        need = semanage.SEMANAGE_CAN_WRITE if write else semanage.SEMANAGE_CAN_READ
        if semanage.semanage_access_check(handle) < need:
            raise SelinuxSettingsError("the SELinux policy store cannot be %s by this user: run as root"
                                       % ("written" if write else "read"))
        if semanage.semanage_connect(handle) < 0:
            raise SelinuxSettingsError("cannot connect to the SELinux policy store")
        self.handle = handle
        self.mls = semanage.semanage_mls_enabled(handle) == 1

    def booleans(self):
        """{name: value at boot} of every boolean in the policy, local changes included."""
        rc, records = self.semanage.semanage_bool_list(self.handle)
        if rc < 0:
            raise SelinuxSettingsError("cannot list the booleans of the SELinux policy store")
        return dict((self.semanage.semanage_bool_get_name(record), bool(self.semanage.semanage_bool_get_value(record)))
                    for record in records)

    def runtime_booleans(self):
        """{name: value now} of the running kernel's booleans ({} when it has none)."""
        try:
            rc, names = self.selinux.security_get_boolean_names()
            if rc < 0:
                return {}
            return dict((name, self.selinux.security_get_boolean_active(name) == 1) for name in names)
        except OSError:
            return {}

    def valid_type(self, setype):
        context = "system_u:object_r:%s%s" % (setype, ":s0" if self.mls else "")
        # libselinux's bindings raise OSError where the C function returns -1
        try:
            return self.selinux.security_check_context(context) == 0
        except OSError:
            return False

    def file_contexts(self, expressions):
        """{expression: (type, local)} of the all-files rules for expressions: the local rule, or
        else the policy's (libsemanage keeps the two apart)."""
        s, found = self.semanage, {}
        for expression in expressions:
            rc, key = s.semanage_fcontext_key_create(self.handle, expression, s.SEMANAGE_FCONTEXT_ALL)
            for local, exists, query in ((True, s.semanage_fcontext_exists_local, s.semanage_fcontext_query_local),
                                         (False, s.semanage_fcontext_exists, s.semanage_fcontext_query)):
                rc, present = exists(self.handle, key)
                if rc >= 0 and present:
                    rc, record = query(self.handle, key)
                    context = s.semanage_fcontext_get_con(record)
                    found[expression] = (s.semanage_context_get_type(context) if context else "<<none>>", local)
                    break
            s.semanage_fcontext_key_free(key)
        return found

    def commit(self, booleans, rules):
        """One transaction: booleans {name: value} at boot and now; rules [(expression, setype, or
        None to drop the local rule)]."""
        s, handle = self.semanage, self.handle
        if s.semanage_begin_transaction(handle) < 0:
            raise SelinuxSettingsError("cannot start a transaction on the SELinux policy store")
        for name, value in sorted(booleans.items()):
            rc, key = s.semanage_bool_key_create(handle, name)
            rc, record = s.semanage_bool_query(handle, key)
            s.semanage_bool_set_value(record, 1 if value else 0)
            if s.semanage_bool_modify_local(handle, key, record) < 0 or \
                    s.semanage_bool_set_active(handle, key, record) < 0:
                raise SelinuxSettingsError("cannot set boolean %s in the SELinux policy store" % name)
        for expression, setype in rules:
            rc, key = s.semanage_fcontext_key_create(handle, expression, s.SEMANAGE_FCONTEXT_ALL)
            if setype is None:
                rc = s.semanage_fcontext_del_local(handle, key)
            else:
                rc = s.semanage_fcontext_modify_local(handle, key, self._rule(expression, setype))
            if rc < 0:
                raise SelinuxSettingsError("cannot write the file context rule %s" % expression)
        with captured_stderr() as messages:
            rc = s.semanage_commit(handle)
        if rc < 0:
            raise SelinuxSettingsError("libsemanage did not commit the transaction, nothing was changed: %s"
                                       % (messages.read().strip() or "it gave no reason"))

    def _rule(self, expression, setype):
        s, handle = self.semanage, self.handle
        rc, context = s.semanage_context_create(handle)
        s.semanage_context_set_user(handle, context, "system_u")
        s.semanage_context_set_role(handle, context, "object_r")
        s.semanage_context_set_type(handle, context, setype)
        if self.mls:
            s.semanage_context_set_mls(handle, context, "s0")
        rc, record = s.semanage_fcontext_create(handle)
        s.semanage_fcontext_set_expr(handle, record, expression)
        s.semanage_fcontext_set_type(record, s.SEMANAGE_FCONTEXT_ALL)
        s.semanage_fcontext_set_con(handle, record, context)
        return record

    def set_runtime(self, name, value):
        try:
            failed = self.selinux.security_set_boolean(name, 1 if value else 0) < 0 or \
                self.selinux.security_commit_booleans() < 0
        except OSError as exc:
            failed = exc
        if failed:
            raise SelinuxSettingsError("cannot set boolean %s in the running kernel%s"
                                       % (name, "" if failed is True else " (%s)" % failed))


class captured_stderr(object):
    """What libsemanage writes to file descriptor 2 meanwhile, readable afterwards."""

    def __enter__(self):
        self.file = tempfile.TemporaryFile(mode="w+")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self.file

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        return False
