# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel arguments of a KVM host, through its boot loader: the one path every role uses.

Arguments are added and removed by key. On GRUB hosts (Debian, Ubuntu) the collection's own
arguments live in one drop-in under /etc/default/grub.d that this core owns; a managed key set
elsewhere in /etc/default/grub or its drop-ins (``mitigations=off`` left by hand) is removed
there, so the value the kernel sees last is the baseline's. The GRUB configuration is then
regenerated (update-grub), once. On EL hosts grubby edits every installed kernel's entry.

The running command line (/proc/cmdline) is compared with the arguments: what it lacks or still
has needs a reboot, which this core never does; it says ``reboot_required``. A kernel that its
boot loader did not start (no ``BOOT_IMAGE=``: started directly, as QEMU ``-kernel`` does) gets
nothing written: a reboot would not bring the arguments.

Pure Python over a root directory (the module passes "/", tests a temporary tree). Private to
the collection: not a public API.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import read_text
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

DROPIN = "/etc/default/grub.d/kvmsec-hardening.cfg"
GRUB_DEFAULTS = "/etc/default/grub"
GRUB_CONFIG = "/boot/grub/grub.cfg"
UPDATE_GRUB = "/usr/sbin/update-grub"
GRUBBY = ("/usr/sbin/grubby", "/usr/bin/grubby")
BOOTLOADERS = ("auto", "grub", "grubby", "none")
# a word GRUB's shell and the kernel both take as one argument: no quotes, no expansion
ARGUMENT = re.compile(r"^[A-Za-z0-9_.-]+(=[^\s\"'`$\\]*)?$")
ASSIGNMENT = re.compile(r"^(\s*(?:export\s+)?)(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$")
OWN_LINE = re.compile(r'^GRUB_CMDLINE_LINUX="\$GRUB_CMDLINE_LINUX ?(.*)"$', re.MULTILINE)
# what GRUB's 10_linux puts before the configured arguments, and what GRUB itself adds
BOOT_WORDS = ("BOOT_IMAGE", "root", "ro", "rw", "initrd")
HEADER = ("# Managed by kvmsec.hardening (kernel_arguments): the baseline's kernel arguments, by key.\n"
          "# Edits here are replaced on the next run; set them through the roles' variables.\n")


class ArgumentError(Exception):
    pass


def key(word):
    """The parameter a word sets: dashes and underscores are the same to the kernel."""
    return word.split("=", 1)[0].replace("-", "_")


def value(word):
    return word.split("=", 1)[1] if "=" in word else None


def split(text):
    """Words of a command line; a double-quoted part (``dyndbg="a b"``) stays in its word."""
    words, current, quoted = [], "", False
    for char in text or "":
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                words.append(current)
            current = ""
        else:
            current += char
    if current:
        words.append(current)
    return words


def check(arguments, absent, bootloader):
    problems = []
    for option, words in (("arguments", arguments), ("absent", absent)):
        bad = [word for word in words if not ARGUMENT.match(word)]
        if bad:
            problems.append("%s: %s %s not a kernel argument; use KEY or KEY=VALUE without spaces, quotes, "
                            "$ or backslashes" % (option, ", ".join(repr(word) for word in bad),
                                                  "is" if len(bad) == 1 else "are"))
    both = [word for word in arguments if unwanted_word(word, [], absent)]
    if both:
        problems.append("%s both in arguments and absent; keep each in one" % ", ".join(both))
    keys = [key(word) for word in arguments]
    twice = sorted(set(k for k in keys if keys.count(k) > 1))
    if twice:
        problems.append("arguments: %s given more than once; give each key once" % ", ".join(twice))
    if bootloader not in BOOTLOADERS:
        problems.append("bootloader: %r is not one of %s" % (bootloader, ", ".join(BOOTLOADERS)))
    if problems:
        raise ArgumentError("; ".join(problems))


def unwanted_word(word, arguments, absent):
    """Whether word undoes the arguments: an absent key (or exact KEY=VALUE), or a key of
    arguments with another value."""
    for entry in absent:
        if key(word) == key(entry) and ("=" not in entry or value(word) == value(entry)):
            return True
    return any(key(word) == key(arg) and value(word) != value(arg) for arg in arguments)


def unmet(words, arguments, absent):
    """(missing, unwanted): arguments that words lack, and the words that undo them. The kernel
    takes a parameter's last value, so only the last occurrence of a key counts as present."""
    last = {}
    for word in words:
        last[key(word)] = word
    missing = [arg for arg in arguments if last.get(key(arg)) is None or value(last[key(arg)]) != value(arg)]
    unwanted = [word for word in words if unwanted_word(word, arguments, absent)]
    return missing, unwanted


def _path(root, relative):
    return os.path.join(root, relative.lstrip("/"))


def running_words(root):
    return split(read_text(_path(root, "proc/cmdline"), default=""))


def detect(root, words, wanted):
    """The boot loader tooling to use, and why none when there is none."""
    booted = any(key(word) == "BOOT_IMAGE" for word in words)
    grub = os.path.exists(_path(root, UPDATE_GRUB)) and os.path.exists(_path(root, GRUB_DEFAULTS))
    grubby = next((path for path in GRUBBY if os.path.exists(_path(root, path))), None)
    if wanted == "auto":
        if not booted:
            return "none", "the running kernel was not started by a boot loader (no BOOT_IMAGE= on its command line)"
        if grubby:
            return "grubby", None
        if grub:
            return "grub", None
        return "none", "neither update-grub with %s nor grubby is installed" % GRUB_DEFAULTS
    if wanted == "grub" and not grub:
        raise ArgumentError("bootloader: grub asked for, but %s or %s is missing" % (UPDATE_GRUB, GRUB_DEFAULTS))
    if wanted == "grubby" and not grubby:
        raise ArgumentError("bootloader: grubby asked for, but it is not installed")
    return wanted, None if wanted != "none" else "bootloader: none asked for"


def _unquote(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[0], text[1:-1]
    return "", text


def edit_assignments(text, arguments, absent):
    """text with every GRUB_CMDLINE_LINUX(_DEFAULT) assignment cleared of the words that undo
    the arguments; other lines untouched. Variable references ($GRUB_CMDLINE_LINUX) stay."""
    lines = []
    for line in text.splitlines(True):
        match = ASSIGNMENT.match(line.rstrip("\n"))
        if match:
            quote, inner = _unquote(match.group(3))
            words = split(inner)
            kept = [w for w in words if w.startswith("$") or not unwanted_word(w, arguments, absent)]
            if kept != words:
                line = "%s%s=%s%s%s\n" % (match.group(1), match.group(2), quote or '"', " ".join(kept), quote or '"')
        lines.append(line)
    return "".join(lines)


def own_words(text):
    match = OWN_LINE.search(text or "")
    return split(match.group(1)) if match else []


def render_own(words):
    if not words:
        return None
    return HEADER + 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX %s"\n' % " ".join(words)


def merge_own(current, arguments, absent):
    """The drop-in's words: an argument replaces its key where it stood, a new one is appended;
    absent keys are dropped, and so is a word another role put there that undoes these."""
    wanted = dict((key(arg), arg) for arg in arguments)
    words, placed = [], set()
    for word in current:
        if key(word) in wanted:
            if key(word) not in placed:
                words.append(wanted[key(word)])
                placed.add(key(word))
        elif not unwanted_word(word, arguments, absent):
            words.append(word)
    return words + [arg for arg in arguments if key(arg) not in placed]


def grub_sources(root, dropin):
    """/etc/default/grub and its drop-ins other than ours, in the order grub-mkconfig reads them."""
    directory = _path(root, os.path.dirname(dropin))
    own = _path(root, dropin)
    names = sorted(name for name in os.listdir(directory) if name.endswith(".cfg")) if os.path.isdir(directory) else []
    return [_path(root, GRUB_DEFAULTS)] + [p for p in (os.path.join(directory, n) for n in names) if p != own]


def generated_words(root):
    """The first entry's kernel arguments in the generated GRUB configuration (what the next
    boot gets by default), without the image and root device."""
    for line in read_text(_path(root, GRUB_CONFIG), default="").splitlines():
        match = re.match(r"^\s*linux(?:efi|16)?\s+\S+\s*(.*)$", line)
        if match:
            return [w for w in split(match.group(1)) if key(w) not in BOOT_WORDS]
    return []


class Needed(object):
    """What one call changes: files (GRUB) or grubby's edits, and whether GRUB's configuration
    is regenerated now (or left stale for a later call: ``stale``)."""

    def __init__(self, bootloader, reason, running, arguments, absent):
        self.bootloader = bootloader
        self.reason = reason
        self.running = running
        self.arguments = arguments
        self.absent = absent
        self.files = []
        self.regenerate = False
        self.stale = False
        self.grubby_add = []
        self.grubby_remove = []
        self.configured = []


def plan_grub(needed, root, dropin):
    arguments, absent = needed.arguments, needed.absent
    for path in grub_sources(root, dropin):
        if os.path.isfile(path):
            before = read_text(path)
            change = _files.change_to(path, edit_assignments(before, arguments, absent), shown="/" + os.path.relpath(path, root))
            if change:
                needed.files.append(change)
    own = _path(root, dropin)
    current = own_words(read_text(own, default=""))
    change = _files.change_to(own, render_own(merge_own(current, arguments, absent)), shown=dropin)
    if change:
        needed.files.append(change)
    needed.configured = generated_words(root)
    needed.regenerate = bool(needed.files) or any(unmet(needed.configured, arguments, absent))


def plan_grubby(needed, run, root):
    arguments, absent = needed.arguments, needed.absent
    info = checked(run, [grubby_path(root), "--info=DEFAULT"], what="grubby --info=DEFAULT")
    match = re.search(r'^args="?([^"\n]*)"?$', info, re.MULTILINE)
    words = split(match.group(1)) if match else []
    missing, unwanted = unmet(words, arguments, absent)
    replaced = set(key(arg) for arg in missing)
    needed.grubby_add = missing
    # grubby --args replaces a key's value; only what no argument replaces is removed
    needed.grubby_remove = sorted(set(w for w in unwanted if key(w) not in replaced))
    needed.configured = [w for w in words if w not in needed.grubby_remove and key(w) not in replaced] + missing


def grubby_path(root="/"):
    return next((path for path in GRUBBY if os.path.exists(_path(root, path))), GRUBBY[0])


def plan(run, arguments, absent, bootloader="auto", dropin=DROPIN, regenerate=True, root="/"):
    arguments, absent = list(arguments or []), list(absent or [])
    check(arguments, absent, bootloader)
    running = running_words(root)
    chosen, reason = detect(root, running, bootloader)
    needed = Needed(chosen, reason, running, arguments, absent)
    if chosen == "grub":
        plan_grub(needed, root, dropin)
        if not regenerate:
            needed.stale, needed.regenerate = needed.regenerate, False
    elif chosen == "grubby":
        plan_grubby(needed, run, root)
    return needed


def result(needed):
    missing, unwanted = unmet(needed.running, needed.arguments, needed.absent)
    return dict(
        bootloader=needed.bootloader,
        not_managed_because=needed.reason,
        files=[change.shown for change in needed.files],
        regenerated=needed.regenerate,
        regenerate_required=needed.stale,
        grubby_added=needed.grubby_add,
        grubby_removed=needed.grubby_remove,
        running=needed.running,
        configured=needed.configured,
        missing=missing,
        unwanted=unwanted,
        # what a reboot brings: the boot loader is ours and the running kernel falls short
        reboot_required=needed.bootloader != "none" and bool(missing or unwanted),
    )


def diff(needed):
    diffs = [change.diff() for change in needed.files]
    if needed.grubby_add or needed.grubby_remove:
        diffs.append({"before": "".join("%s\n" % w for w in needed.grubby_remove),
                      "after": "".join("%s\n" % w for w in needed.grubby_add),
                      "before_header": "every kernel's arguments (grubby)", "after_header": "every kernel's arguments (grubby)"})
    return diffs


def warnings(needed, found):
    notes = []
    if needed.reason and (found["missing"] or found["unwanted"]):
        notes.append("%s, so nothing is written: %s where this host's kernel command line is set"
                     % (needed.reason, " and ".join(part for part in (
                         "add " + " ".join(found["missing"]) if found["missing"] else "",
                         "remove " + " ".join(found["unwanted"]) if found["unwanted"] else "") if part)))
    return notes


def apply(needed, run, root="/"):
    """Write the files and regenerate GRUB's configuration (the files put back if that fails),
    or let grubby edit every kernel's entry."""
    if needed.bootloader == "grubby":
        path = grubby_path(root)
        if needed.grubby_remove:
            checked(run, [path, "--update-kernel=ALL", "--remove-args=%s" % " ".join(needed.grubby_remove)],
                    what="grubby --remove-args")
        if needed.grubby_add:
            checked(run, [path, "--update-kernel=ALL", "--args=%s" % " ".join(needed.grubby_add)], what="grubby --args")
        return
    then = (lambda: checked(run, [UPDATE_GRUB], what="update-grub")) if needed.regenerate else None
    _files.write_all(needed.files, then=then)


def decide(run, arguments, absent, bootloader="auto", dropin=DROPIN, regenerate=True, root="/"):
    """The plan for the module's whole job."""
    needed = plan(run, arguments, absent, bootloader, dropin, regenerate, root)
    found = result(needed)
    changed = bool(needed.files or needed.regenerate or needed.grubby_add or needed.grubby_remove)

    def carry_out():
        apply(needed, run, root)
        if not needed.regenerate:
            return found
        # what update-grub made of every file: a drop-in read after ours may set the line anew
        needed.configured = generated_words(root)
        left = unmet(needed.configured, needed.arguments, needed.absent)
        if any(left):
            found["reboot_required"] = False
            plan_.warnings.append("update-grub ran, yet the next boot still %s: a file read after %s sets "
                                  "GRUB_CMDLINE_LINUX anew, so a reboot would not help"
                                  % (" and ".join(part for part in (
                                      "lacks " + " ".join(left[0]) if left[0] else "",
                                      "has " + " ".join(left[1]) if left[1] else "") if part), dropin))
        found["configured"] = needed.configured
        return found

    plan_ = Plan(changed, found, diff=diff(needed), warnings=warnings(needed, found),
                 apply=carry_out if changed else None)
    return plan_
