# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AppArmor profiles of the hypervisor itself: enforced, with local rules. Private to the collection.

A profile leaves enforce mode three ways, and all three are undone here: a link in
``/etc/apparmor.d/disable/`` (``aa-disable``), a link in ``/etc/apparmor.d/force-complain/``, and
``complain`` among the flags of the profile's header (``aa-complain``). Local rules go into a
block the module owns in ``/etc/apparmor.d/local/NAME``, which the distribution's profiles
include and package upgrades leave alone; lines of the file outside the block stay. A profile
whose files changed, or that the kernel holds in another mode, is loaded again with
``apparmor_parser --replace``; if that fails, the files are put back and loaded again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

PROFILE_DIR = "etc/apparmor.d"
LOADED = "sys/kernel/security/apparmor/profiles"
BEGIN = "# BEGIN kvmsec.hardening (managed block: edits inside are replaced)"
END = "# END kvmsec.hardening"
# the header of a profile: "profile NAME [ATTACHMENT] [flags=(...)] {" or "/attachment [flags=(...)] {"
HEADER = re.compile(r"^(?P<indent>\s*)(?:profile\s+(?P<name>\S+)(?:\s+(?P<attach>/\S*))?|(?P<path>/\S+))"
                    r"(?P<flags>\s+flags=\((?P<list>[^)]*)\))?\s*\{\s*$", re.M)
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BAD_PATH = re.compile(r"[\s*?\[\]{}^\"#,]")


class AppArmorError(Exception):
    """The operator's to act on; the host is unchanged (or put back)."""


def check_file_name(option, name):
    if not FILE_NAME.match(name):
        raise AppArmorError("%s: %r is not a profile file name in /etc/apparmor.d (for example "
                            "usr.sbin.libvirtd)" % (option, name))


def check_local_rules(local_rules):
    """{profile file: [rule]} of the option, each rule one line ending in a comma."""
    checked_rules = {}
    for name, rules in local_rules.items():
        check_file_name("local_rules", name)
        if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
            raise AppArmorError("local_rules.%s: give a list of rules (strings)" % name)
        for rule in rules:
            if "\n" in rule or not rule.strip().endswith(","):
                raise AppArmorError("local_rules.%s: %r is not one AppArmor rule ending in a comma "
                                    "(for example '/srv/vms/** r,')" % (name, rule))
        checked_rules[name] = [rule.strip() for rule in rules]
    return checked_rules


def read_directories(paths, option):
    """The rules that let a profile read what is under each directory."""
    rules = []
    for index, path in enumerate(paths):
        if not path.startswith("/") or path.rstrip("/") == "" or BAD_PATH.search(path):
            raise AppArmorError("%s[%d]: %r is not an absolute directory below / without spaces, "
                                "commas, quotes or AppArmor glob characters" % (option, index, path))
        path = path.rstrip("/")
        rules.extend(["%s/ r," % path, "%s/** r," % path])
    return rules


def loaded_modes(root):
    """{profile name: mode} of what the kernel has loaded; None without AppArmor."""
    try:
        with open(os.path.join(root, LOADED)) as handle:
            text = handle.read()
    except (IOError, OSError):
        return None
    modes = {}
    for line in text.splitlines():
        match = re.match(r"^(.+) \((\w+)\)$", line.strip())
        if match:
            modes[match.group(1)] = match.group(2)
    return modes


def without_complain(text):
    """(profile name, text with 'complain' taken out of its header's flags)."""
    match = HEADER.search(text)
    if match is None:
        return None, text
    name = match.group("name") or match.group("path")
    flags = [flag.strip() for flag in (match.group("list") or "").split(",") if flag.strip()]
    if "complain" not in flags:
        return name, text
    kept = [flag for flag in flags if flag != "complain"]
    replacement = " flags=(%s)" % ", ".join(kept) if kept else ""
    start, end = match.span("flags")
    return name, text[:start] + replacement + text[end:]


def with_block(text, rules):
    """text with the managed block holding rules (the block is dropped when there are none)."""
    lines = (text or "").splitlines()
    if BEGIN in lines and END in lines[lines.index(BEGIN):]:
        start = lines.index(BEGIN)
        end = lines.index(END, start)
        lines = lines[:start] + lines[end + 1:]
    if rules:
        lines += [BEGIN] + ["  " + rule for rule in rules] + [END]
    return "".join(line + "\n" for line in lines)


def read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


class Needed(object):
    """What the host lacks, read before anything is written: profiles, files, links, reloads."""

    def __init__(self):
        self.profiles = []   # {file, name, before (mode), links, header}
        self.files = []      # _files.FileChange
        self.links = []      # paths of disable/force-complain links to remove
        self.reload = []     # profile files to load again
        self.missing = []    # profile files that do not exist


def plan(root, enforce, local_rules):
    """What it takes for the profiles of enforce to be loaded in enforce mode, and for the
    profiles of local_rules ({profile file: [rules]}) to have those local rules."""
    for name in list(enforce) + list(local_rules):
        check_file_name("enforce" if name in enforce else "local_rules", name)
    modes = loaded_modes(root)
    if modes is None:
        raise AppArmorError("AppArmor is not enabled on this host (%s is missing): boot with "
                            "apparmor=1 security=apparmor, or leave this host to SELinux" % ("/" + LOADED))
    result = Needed()
    for name in sorted(set(enforce) | set(local_rules)):
        profile_path = os.path.join(root, PROFILE_DIR, name)
        text = read(profile_path)
        if text is None:
            result.missing.append(name)
            continue
        profile, fixed = without_complain(text)
        entry = dict(file=name, name=profile, mode=modes.get(profile, "not loaded"), changes=[])
        needs_reload = False
        if name in local_rules:
            local = os.path.join(root, PROFILE_DIR, "local", name)
            before = read(local)
            after = with_block(before, local_rules[name])
            if after != (before or ""):
                result.files.append(_files.FileChange(local, before, after, shown=_shown(root, local)))
                entry["changes"].append("local rules")
                needs_reload = True
        if name in enforce:
            for kind in ("disable", "force-complain"):
                link = os.path.join(root, PROFILE_DIR, kind, name)
                if os.path.lexists(link):
                    result.links.append(link)
                    entry["changes"].append("%s link removed" % kind)
            if fixed != text:
                result.files.append(_files.FileChange(profile_path, text, fixed, shown=_shown(root, profile_path)))
                entry["changes"].append("complain flag removed")
            if entry["changes"] or entry["mode"] != "enforce":
                needs_reload = True
        if needs_reload:
            entry["changes"].append("reloaded")
            result.reload.append(profile_path)
        if entry["changes"]:
            result.profiles.append(entry)
    return result


def changed(result):
    return bool(result.files or result.links or result.reload)


def _shown(root, path):
    return os.path.join("/", os.path.relpath(path, root))


def diff(result, root):
    diffs = [change.diff() for change in result.files]
    modes = [profile for profile in result.profiles if profile["mode"] != "enforce"]
    if modes or result.links:
        diffs.append(dict(
            before="".join("%s (%s)\n" % (p["name"], p["mode"]) for p in modes)
            + "".join("link %s\n" % os.path.join("/", os.path.relpath(link, root)) for link in result.links),
            after="".join("%s (enforce)\n" % p["name"] for p in modes),
            before_header="AppArmor profiles loaded (before)", after_header="AppArmor profiles loaded (after)"))
    return diffs


def apply(result, run):
    """Write the files, remove the links, load the profiles; put everything back on a failure."""
    removed = []

    def unlink_and_load():
        for link in result.links:
            removed.append((link, os.readlink(link) if os.path.islink(link) else None))
            os.unlink(link)
        load(run, result.reload)

    try:
        _files.write_all(result.files, unlink_and_load)
    except (_files.NotRestored, AppArmorError, IOError, OSError) as exc:
        for link, target in removed:
            if target is not None:
                os.symlink(target, link)
        for path in result.reload:
            try:
                load(run, [path])
            except AppArmorError:
                pass
        if isinstance(exc, _files.NotRestored):
            raise AppArmorError(str(exc))
        raise AppArmorError("%s; the profile files and links are back as they were" % exc)


def load(run, paths):
    for path in paths:
        try:
            checked(run, ["apparmor_parser", "--replace", "--", path], what="apparmor_parser")
        except CommandError as exc:
            raise AppArmorError(str(exc))


def decide(run, enforce, local_rules, directories=(), directory_profiles=(), root="/"):
    """The plan for the module's whole job: directories (the module's read_directories) become
    read rules in the local files of directory_profiles, beside local_rules."""
    rules = check_local_rules(local_rules)
    directory_rules = read_directories(directories, "read_directories")
    for name in directory_profiles:
        rules[name] = rules.get(name, []) + directory_rules
    found = plan(root, enforce, rules)
    apply_ = (lambda: apply(found, run)) if changed(found) else None
    return Plan(changed(found), dict(profiles=found.profiles, missing=found.missing), diff(found, root), (), apply_)
