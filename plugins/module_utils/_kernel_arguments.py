# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel arguments of a KVM host, through its boot loader: the one path every role uses.

Arguments are added and removed by key. On GRUB hosts (Debian, Ubuntu) the collection's own
arguments live in one drop-in under /etc/default/grub.d that this core owns, one line per owner
(the role that asks for them), so that a role's words it no longer asks for go, and two roles
that disagree on a key are refused. A word that undoes them elsewhere in /etc/default/grub or
its drop-ins (``mitigations=off`` left by hand) is removed there, so the value the kernel sees
last is the baseline's; a line too involved to edit safely is left as it is and named. The GRUB
configuration is then regenerated (update-grub). On EL hosts grubby edits every installed
kernel's entry.

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

# sorts after the distributions' and vendors' drop-ins, so none can set the line anew after it
DROPIN = "/etc/default/grub.d/99-zz-kvmsec-hardening.cfg"
GRUB_DEFAULTS = "/etc/default/grub"
GRUB_CONFIG = "/boot/grub/grub.cfg"
UPDATE_GRUB = "/usr/sbin/update-grub"
GRUBBY = ("/usr/sbin/grubby", "/usr/bin/grubby")
BOOTLOADERS = ("auto", "grub", "grubby", "none")
# a word that the shell reading GRUB's defaults, GRUB's own script and the kernel all take as
# one plain argument: no quotes, expansion, separators or redirections
ARGUMENT = re.compile(r"^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:/+@%=-]*)?$")
OWNER = re.compile(r"^[A-Za-z0-9_.-]+$")
# NAME=VALUE [# comment], VALUE wholly double- or single-quoted or one plain word: the lines
# this core rewrites; any other assignment of the two names is left as written
ASSIGNMENT = re.compile(r"""^(?P<lead>\s*(?:export\s+)?)(?P<name>GRUB_CMDLINE_LINUX(?:_DEFAULT)?)="""
                        r"""(?P<value>"[^"\\`]*"|'[^']*'|[^\s"'`#;\\]*)(?P<tail>\s*(?:#.*)?)$""")
ANY_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?GRUB_CMDLINE_LINUX(?:_DEFAULT)?=(?P<rest>.*)$")
OWN_LINE = re.compile(r'^# owner: (\S+)\nGRUB_CMDLINE_LINUX="\$GRUB_CMDLINE_LINUX ([^"]*)"$', re.MULTILINE)
# what GRUB's 10_linux puts before the configured arguments, and what GRUB itself adds
BOOT_WORDS = ("BOOT_IMAGE", "root", "ro", "rw", "initrd")
HEADER = ("# Managed by kvmsec.hardening (kernel_arguments): the baseline's kernel arguments, one line per\n"
          "# role that asks for them. The file is written anew on every run: set them through the roles' variables.\n")


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


def check(owner, arguments, absent, bootloader, dropin):
    problems = []
    if not OWNER.match(owner or ""):
        problems.append("owner: %r is not a name of letters, digits, '.', '_' or '-'" % owner)
    for option, words in (("arguments", arguments), ("absent", absent)):
        bad = [word for word in words if not ARGUMENT.match(word)]
        if bad:
            problems.append("%s: %s %s not a plain kernel argument; use KEY or KEY=VALUE of letters, digits "
                            "and _ . , : / + @ %% = -" % (option, ", ".join(repr(word) for word in bad),
                                                          "is" if len(bad) == 1 else "are"))
    both = [word for word in arguments if undoes(word, [], absent)]
    if both:
        problems.append("%s both in arguments and absent; keep each in one" % ", ".join(both))
    keys = [key(word) for word in arguments]
    twice = sorted(set(k for k in keys if keys.count(k) > 1))
    if twice:
        problems.append("arguments: %s given more than once; give each key once" % ", ".join(twice))
    if bootloader not in BOOTLOADERS:
        problems.append("bootloader: %r is not one of %s" % (bootloader, ", ".join(BOOTLOADERS)))
    if os.path.dirname(dropin) != os.path.dirname(DROPIN) or not dropin.endswith(".cfg"):
        problems.append("dropin: %s is not a .cfg file directly in %s, where GRUB reads drop-ins"
                        % (dropin, os.path.dirname(DROPIN)))
    if problems:
        raise ArgumentError("; ".join(problems))


def undoes(word, arguments, absent):
    """Whether a word, wherever it stands, undoes the arguments: an absent key (or exact
    KEY=VALUE), or a key of arguments with another value."""
    for entry in absent:
        if key(word) == key(entry) and ("=" not in entry or value(word) == value(entry)):
            return True
    return any(key(word) == key(arg) and value(word) != value(arg) for arg in arguments)


def unmet(words, arguments, absent):
    """(missing, unwanted) of a command line: the arguments it lacks, and the words that undo
    them. The kernel keeps a parameter's last value: an earlier value a later one replaces
    undoes nothing, a flag (absent KEY) counts wherever it stands."""
    last = {}
    for index, word in enumerate(words):
        last[key(word)] = index
    missing = [arg for arg in arguments if key(arg) not in last or value(words[last[key(arg)]]) != value(arg)]
    flags = set(key(entry) for entry in absent if "=" not in entry)
    unwanted = [word for index, word in enumerate(words)
                if key(word) in flags or (index == last[key(word)] and undoes(word, arguments, absent))]
    return missing, unwanted


def _path(root, relative):
    return os.path.join(root, relative.lstrip("/"))


def running_words(root):
    return split(read_text(_path(root, "proc/cmdline"), default=""))


def grubby_path(root="/"):
    return next((path for path in GRUBBY if os.path.exists(_path(root, path))), None)


def detect(root, words, wanted):
    """The boot loader tooling to use, and why none when there is none."""
    booted = any(key(word) == "BOOT_IMAGE" for word in words)
    grub = os.path.exists(_path(root, UPDATE_GRUB)) and os.path.exists(_path(root, GRUB_DEFAULTS))
    grubby = grubby_path(root)
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


def edit_assignments(text, arguments, absent):
    """(text, unedited): text with every GRUB_CMDLINE_LINUX(_DEFAULT) assignment it can rewrite
    safely cleared of the words that undo the arguments, and the line numbers of assignments
    that hold such a word but are too involved to rewrite (continued, escaped, computed)."""
    lines, unedited = text.splitlines(True), []
    for index, line in enumerate(lines):
        body = line.rstrip("\n")
        match = ASSIGNMENT.match(body)
        if match and "$(" not in match.group("value"):
            quoted = match.group("value")[:1] in ("'", '"')
            inner = match.group("value")[1:-1] if quoted else match.group("value")
            words = split(inner)
            kept = [w for w in words if w.startswith("$") or not undoes(w, arguments, absent)]
            if kept != words:
                quote = match.group("value")[0] if quoted else '"'
                lines[index] = "%s%s=%s%s%s%s\n" % (match.group("lead"), match.group("name"), quote, " ".join(kept),
                                                    quote, match.group("tail"))
        elif ANY_ASSIGNMENT.match(body):
            # the value, with the lines a trailing backslash continues it onto
            end = index
            while lines[end].rstrip("\n").endswith("\\") and end + 1 < len(lines):
                end += 1
            value_text = ANY_ASSIGNMENT.match(body).group("rest") + " " + " ".join(lines[index + 1:end + 1])
            words = split(re.sub(r"[\"'`()\\]", " ", value_text))
            if any(undoes(w, arguments, absent) for w in words):
                unedited.append(index + 1)
    return "".join(lines), unedited


def own_blocks(text):
    """The drop-in's lines, owner by owner, in file order."""
    return [(owner, split(words)) for owner, words in OWN_LINE.findall(text or "")]


def render_own(blocks):
    lines = ["# owner: %s\nGRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX %s\"\n" % (owner, " ".join(words))
             for owner, words in blocks if words]
    return HEADER + "".join(lines) if lines else None


def merge_own(blocks, owner, arguments, absent):
    """The drop-in's lines with owner's replaced by exactly its arguments (a word it no longer
    asks for goes); another owner's word these undo is a conflict between two roles."""
    for other, words in blocks:
        clash = [w for w in words if other != owner and undoes(w, arguments, absent)]
        if clash:
            raise ArgumentError("%s, which %s sets in %s, is refused or set otherwise by %s (%s): keep the "
                                "key in one role" % (" ".join(clash), other, DROPIN, owner, " ".join(arguments + absent)))
    merged = [(name, list(arguments) if name == owner else words) for name, words in blocks]
    if owner not in [name for name, dummy in blocks]:
        merged.append((owner, list(arguments)))
    return merged


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
    """What one call changes: files (GRUB) or grubby's edits, whether GRUB's configuration is
    regenerated now (or left stale for a later call: ``stale``), and the lines it cannot edit."""

    def __init__(self, bootloader, reason, running, arguments, absent):
        self.bootloader = bootloader
        self.reason = reason
        self.running = running
        self.arguments = arguments
        self.absent = absent
        self.files = []
        self.unedited = []
        self.regenerate = False
        self.stale = False
        self.grubby_add = []
        self.grubby_remove = []
        self.configured = []


def plan_grub(needed, root, owner, dropin):
    arguments, absent = needed.arguments, needed.absent
    for path in grub_sources(root, dropin):
        if os.path.isfile(path):
            shown = "/" + os.path.relpath(path, root)
            text, unedited = edit_assignments(read_text(path), arguments, absent)
            needed.unedited += ["%s line %d" % (shown, number) for number in unedited]
            change = _files.change_to(path, text, shown=shown)
            if change:
                needed.files.append(change)
    own = _path(root, dropin)
    blocks = merge_own(own_blocks(read_text(own, default="")), owner, arguments, absent)
    change = _files.change_to(own, render_own(blocks), shown=dropin)
    if change:
        needed.files.append(change)
    needed.configured = generated_words(root)
    # a line left as written keeps the next boot short of the arguments: regenerating again
    # on every run would not change that
    stale = any(unmet(needed.configured, arguments, absent)) and not needed.unedited
    needed.regenerate = bool(needed.files) or stale


def plan_grubby(needed, run, root):
    arguments, absent = needed.arguments, needed.absent
    info = checked(run, [grubby_path(root), "--info=DEFAULT"], what="grubby --info=DEFAULT")
    match = re.search(r'^args="(.*)"$', info, re.MULTILINE)
    words = split(match.group(1)) if match else []
    missing = unmet(words, arguments, absent)[0]
    replaced = set(key(arg) for arg in missing)
    needed.grubby_add = missing
    # grubby --args replaces a key's value; what no argument replaces is removed
    needed.grubby_remove = sorted(set(w for w in words if undoes(w, arguments, absent) and key(w) not in replaced))
    needed.configured = [w for w in words if w not in needed.grubby_remove and key(w) not in replaced] + missing


def plan(run, owner, arguments, absent, bootloader="auto", dropin=DROPIN, regenerate=True, root="/"):
    arguments, absent = list(arguments or []), list(absent or [])
    check(owner, arguments, absent, bootloader, dropin)
    running = running_words(root)
    chosen, reason = detect(root, running, bootloader)
    needed = Needed(chosen, reason, running, arguments, absent)
    if chosen == "grub":
        plan_grub(needed, root, owner, dropin)
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
        unedited=needed.unedited,
        regenerated=needed.regenerate,
        regenerate_required=needed.stale,
        grubby_added=needed.grubby_add,
        grubby_removed=needed.grubby_remove,
        running=needed.running,
        configured=needed.configured,
        missing=missing,
        unwanted=unwanted,
        # what a reboot brings: the boot loader is ours, nothing left as written keeps the next
        # boot short, and the running kernel falls short
        reboot_required=needed.bootloader != "none" and not needed.unedited and bool(missing or unwanted),
    )


def diff(needed):
    diffs = [change.diff() for change in needed.files]
    if needed.grubby_add or needed.grubby_remove:
        diffs.append({"before": "".join("%s\n" % w for w in needed.grubby_remove),
                      "after": "".join("%s\n" % w for w in needed.grubby_add),
                      "before_header": "every kernel's arguments (grubby)", "after_header": "every kernel's arguments (grubby)"})
    return diffs


def short_of(missing, unwanted):
    return " and ".join(part for part in ("lacks " + " ".join(missing) if missing else "",
                                          "has " + " ".join(unwanted) if unwanted else "") if part)


def warnings(needed, found):
    notes = []
    if needed.reason and (found["missing"] or found["unwanted"]):
        notes.append("%s, so nothing is written: the running kernel %s; set that where this host's kernel "
                     "command line is set" % (needed.reason, short_of(found["missing"], found["unwanted"])))
    for where in needed.unedited:
        notes.append("%s sets GRUB_CMDLINE_LINUX in a way this module does not rewrite (a continued, escaped or "
                     "computed value) and undoes these arguments there: edit it by hand; a reboot would not help "
                     "until then" % where)
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


def decide(run, owner, arguments, absent, bootloader="auto", dropin=DROPIN, regenerate=True, root="/"):
    """The plan for the module's whole job."""
    needed = plan(run, owner, arguments, absent, bootloader, dropin, regenerate, root)
    found = result(needed)
    changed = bool(needed.files or needed.regenerate or needed.grubby_add or needed.grubby_remove)

    def carry_out():
        apply(needed, run, root)
        if not needed.regenerate:
            return found
        # what update-grub made of every file
        found["configured"] = generated_words(root)
        left = unmet(found["configured"], needed.arguments, needed.absent)
        if any(left):
            found["reboot_required"] = False
            plan_.warnings.append("update-grub ran, yet the next boot still %s: a file read after %s sets "
                                  "GRUB_CMDLINE_LINUX anew, so a reboot would not help" % (short_of(*left), dropin))
        return found

    plan_ = Plan(changed, found, diff=diff(needed), warnings=warnings(needed, found),
                 apply=carry_out if changed else None)
    return plan_
