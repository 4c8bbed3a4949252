# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SELinux local policy modules, versioned and installed in one transaction.

Private to the collection: not a public API.

Sources are ``.te`` (optionally with ``.fc``; compiled with checkmodule and semodule_package),
``.cil``, prebuilt ``.pp``, or AVC/USER_AVC denial records, turned into a ``.te`` here. Every
source is built before anything changes; all installs, removals, enables and disables of one
call then go to ``semodule`` as one command, which libsemanage commits as one transaction: one
policy rebuild, and a failure of any part leaves the policy store as it was.

A module's identity is the SHA-256 of its CIL, the form libsemanage keeps and
``semodule --list-modules=full --checksum`` reports. For a ``.pp`` it is the CIL that
policycoreutils' ``hll/pp`` converter makes of it (the converter libsemanage itself runs);
for a ``.cil`` it is the file. Equal checksums mean no transaction at all.

Each installed version is kept under ``STATE_DIR/NAME/SHA256/`` (the compiled module and its
sources) with ``STATE_DIR/NAME/index.json`` holding the install history; ``rollback``
reinstalls the version installed before the current one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bz2
import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time

from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import atomic_write
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

DEFAULT_PRIORITY = 400
DEFAULT_STATE_DIR = "/var/lib/kvmsec/selinux_modules"
DEFAULT_KEEP_VERSIONS = 5
STORE_ROOT = "/var/lib/selinux"
PP_CONVERTERS = ("/usr/libexec/selinux/hll/pp", "/usr/lib/selinux/hll/pp")

STATES = ("present", "absent", "enabled", "disabled")
FORMATS = ("te", "cil", "pp")
SOURCE_KEYS = ("src", "content", "avc")
# checkmodule's identifier syntax, without the dots semodule would read as a file extension
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,127}$")

POLICYDB_MAGIC = 0xF97CFF8C
MODULE_MAGIC = 0xF97CFF8D
PP_MAGIC = 0xF97CFF8F
CONFIG_MLS = 1

AVC_RE = re.compile(
    r"avc:\s+denied\s+\{\s*(?P<perms>[^}]*?)\s*\}\s+for\s.*?"
    r"scontext=(?P<scontext>\S+)\s+tcontext=(?P<tcontext>\S+)\s+tclass=(?P<tclass>[A-Za-z0-9_]+)")
TE_MODULE_RE = re.compile(r"^\s*module\s+(?P<name>\S+)\s+(?P<version>[0-9][0-9.]*)\s*;", re.M)
# libsepol's cil_lexer.l: what a symbol is made of
CIL_SYMBOL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                             "[].@=/*-_$%+!|&^:~`#{}'<>?,")
OPTION_FILES = {"src": ".te, .cil or .pp", "fc_src": ".fc file contexts", "if_src": ".if interface"}


class SelinuxModuleError(Exception):
    """Bad input or an unusable host: the message says what is wrong and what is valid."""


class Tools(object):
    """Paths of the policy tools; the module shell finds them on the host."""

    def __init__(self, semodule, checkmodule=None, semodule_package=None, pp_converter=None):
        self.semodule = semodule
        self.checkmodule = checkmodule
        self.semodule_package = semodule_package
        self.pp_converter = pp_converter


class Host(object):
    """The host's policy: its store name (SELINUXTYPE) and whether it is MLS/MCS."""

    def __init__(self, policy_type, mls, store_root=STORE_ROOT):
        self.policy_type = policy_type
        self.mls = mls
        self.store_root = store_root


# ---------------------------------------------------------------- binary headers

def _u32(data, offset):
    if offset + 4 > len(data):
        raise ValueError("truncated at byte %d" % offset)
    return struct.unpack_from("<I", data, offset)[0]


def _string(data, offset):
    length = _u32(data, offset)
    start = offset + 4
    if start + length > len(data):
        raise ValueError("truncated string at byte %d" % offset)
    return data[start:start + length].decode("ascii", "replace"), start + length


def policy_is_mls(data):
    """Whether a kernel binary policy (its first bytes suffice) was built with MLS/MCS."""
    try:
        if _u32(data, 0) != POLICYDB_MAGIC:
            raise ValueError("not a binary policy")
        dummy, offset = _string(data, 4)
        return bool(_u32(data, offset + 4) & CONFIG_MLS)
    except ValueError as exc:
        raise SelinuxModuleError("cannot read the policy header: %s" % exc)


def pp_info(data):
    """(module name, MLS) of a policy package (.pp)."""
    try:
        if _u32(data, 0) != PP_MAGIC:
            raise ValueError("no policy package magic")
        if _u32(data, 8) < 1:
            raise ValueError("no sections")
        offset = _u32(data, 12)
        if _u32(data, offset) != MODULE_MAGIC:
            raise ValueError("the first section is not a policy module")
        dummy, offset = _string(data, offset + 4)
        config = _u32(data, offset + 8)
        name, dummy = _string(data, offset + 20)
        return name, bool(config & CONFIG_MLS)
    except ValueError as exc:
        raise SelinuxModuleError("not a valid SELinux policy package (.pp): %s" % exc)


def find_policy_file(policy_dir):
    """The newest kernel policy file (policy.NN) of a policy, or None."""
    candidates = []
    for path in glob.glob(os.path.join(policy_dir, "policy.*")):
        suffix = path.rsplit(".", 1)[1]
        if suffix.isdigit():
            candidates.append((int(suffix), path))
    return max(candidates)[1] if candidates else None


# ---------------------------------------------------------------- AVC denials -> .te

def context_type(context):
    parts = context.split(":")
    if len(parts) < 3:
        raise SelinuxModuleError("malformed security context %r in the denial records" % context)
    return parts[2]


def parse_denials(text):
    """AVC and USER_AVC denials in audit log or ausearch text -> {(source, target, class): perms}.

    Records other than denials (SYSCALL, PROCTITLE, granted, SELINUX_ERR) are ignored. The same
    record printed twice (ausearch repeats multi-line events) counts once.
    """
    rules = {}
    for match in AVC_RE.finditer(text):
        source = context_type(match.group("scontext"))
        target = context_type(match.group("tcontext"))
        key = (source, "self" if target == source else target, match.group("tclass"))
        rules.setdefault(key, set()).update(match.group("perms").split())
    return rules


def _braced(items):
    items = sorted(items)
    return items[0] if len(items) == 1 else "{ %s }" % " ".join(items)


def generate_te(name, rules, version="1.0"):
    """A .te module allowing exactly the denied accesses, deterministic for the same input."""
    types, classes = set(), {}
    for (source, target, tclass), perms in rules.items():
        types.add(source)
        if target != "self":
            types.add(target)
        classes.setdefault(tclass, set()).update(perms)
    lines = ["# Generated by kvmsec.hardening.selinux_module from AVC/USER_AVC denials.",
             "# Review before relying on it: each rule allows what was denied, nothing less.",
             "module %s %s;" % (name, version), "", "require {"]
    lines += ["\ttype %s;" % t for t in sorted(types)]
    lines += ["\tclass %s %s;" % (c, _braced(p)) for c, p in sorted(classes.items())]
    lines.append("}")
    current = None
    for (source, target, tclass), perms in sorted(rules.items()):
        if source != current:
            lines += ["", "#============= %s ==============" % source]
            current = source
        lines.append("allow %s %s:%s %s;" % (source, target, tclass, _braced(perms)))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- input

class Spec(object):
    """One module as asked for: where its source comes from and the state wanted."""

    def __init__(self, name, state="present", src=None, content=None, avc=None, fmt=None,
                 fc_src=None, fc_content=None, if_src=None, if_content=None, rollback=False):
        self.name = name
        self.state = state
        self.src = src
        self.content = content
        self.avc = avc
        self.format = fmt
        self.fc_src = fc_src
        self.fc_content = fc_content
        self.if_src = if_src
        self.if_content = if_content
        self.rollback = rollback

    @property
    def has_source(self):
        return any(getattr(self, key) is not None for key in SOURCE_KEYS)


def spec_from_params(params):
    """A Spec from one module entry of the module's parameters (unknown keys ignored)."""
    return Spec(params["name"], state=params.get("state") or "present", src=params.get("src"),
                content=params.get("content"), avc=params.get("avc"), fmt=params.get("format"),
                fc_src=params.get("fc_src"), fc_content=params.get("fc_content"),
                if_src=params.get("if_src"), if_content=params.get("if_content"),
                rollback=bool(params.get("rollback")))


def sniff_format(text):
    if TE_MODULE_RE.search(text):
        return "te"
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(";"):
            return "cil" if stripped.startswith("(") else None
    return None


def _validate_one(spec):
    name = spec.name
    if not NAME_RE.match(name or ""):
        raise SelinuxModuleError(
            "module name %r is not valid: use a letter followed by letters, digits, '_' or '-' "
            "(at most 128 characters)" % name)
    if spec.state not in STATES:
        raise SelinuxModuleError("module %s: state %r is not one of %s"
                                 % (name, spec.state, ", ".join(STATES)))
    given = [key for key in SOURCE_KEYS if getattr(spec, key) is not None]
    if len(given) > 1:
        raise SelinuxModuleError("module %s: give one source, not %s" % (name, " and ".join(given)))
    if spec.fc_src is not None and spec.fc_content is not None:
        raise SelinuxModuleError("module %s: give fc_src or fc_content, not both" % name)
    if spec.if_src is not None and spec.if_content is not None:
        raise SelinuxModuleError("module %s: give if_src or if_content, not both" % name)
    if spec.format is not None and spec.format not in FORMATS:
        raise SelinuxModuleError("module %s: format %r is not one of %s"
                                 % (name, spec.format, ", ".join(FORMATS)))
    if spec.rollback:
        if given:
            raise SelinuxModuleError(
                "module %s: rollback reinstalls a kept version; it takes no source (%s given)"
                % (name, given[0]))
        if spec.state not in ("present", "enabled"):
            raise SelinuxModuleError("module %s: rollback needs state present or enabled, not %s"
                                     % (name, spec.state))
    elif spec.state == "present" and not given:
        raise SelinuxModuleError(
            "module %s: state present needs a source (src, content or avc), or rollback: true"
            % name)
    if spec.state == "absent" and given:
        raise SelinuxModuleError("module %s: state absent takes no source" % name)


def validate(specs):
    """Check every requested module before anything is built or changed."""
    if not specs:
        raise SelinuxModuleError("no module given: set name (one module) or modules (a list)")
    seen = set()
    for spec in specs:
        _validate_one(spec)
        if spec.name in seen:
            raise SelinuxModuleError("module %s is listed twice; list each module once" % spec.name)
        seen.add(spec.name)


# ---------------------------------------------------------------- building

class Build(object):
    """A module ready to install: its file (NAME.pp or NAME.cil), its sources and checksum."""

    def __init__(self, name, fmt, data, sha256, sources, origin, generated=None, denials=None):
        self.name = name
        self.format = fmt
        self.data = data
        self.sha256 = sha256
        self.sources = sources
        self.origin = origin
        self.generated = generated
        self.denials = denials

    @property
    def filename(self):
        return "%s.%s" % (self.name, self.format)


def _read(path, binary=False, what="source"):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError) as exc:
        raise SelinuxModuleError("cannot read %s %s: %s" % (what, path, exc.strerror or exc))
    return data if binary else data.decode("utf-8", "replace")


def _read_option(spec, option, binary=False):
    """The file an option names; the refusal names the module, the option and what it takes."""
    path = getattr(spec, option)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError) as exc:
        raise SelinuxModuleError("module %s: %s %s cannot be read (%s): give the path of a readable %s "
                                 "file on the managed host" % (spec.name, option, path, exc.strerror or exc,
                                                               OPTION_FILES[option]))
    return data if binary else data.decode("utf-8", "replace")


def _format_of(spec, text=None):
    if spec.format:
        return spec.format
    if spec.src is not None:
        ext = os.path.splitext(spec.src)[1].lstrip(".").lower()
        if ext in FORMATS:
            return ext
        raise SelinuxModuleError(
            "module %s: cannot tell the format of %s from its name: set format (te, cil or pp)"
            % (spec.name, spec.src))
    found = sniff_format(text)
    if found is None:
        raise SelinuxModuleError(
            "module %s: content is neither a .te module (no 'module NAME VERSION;' statement) "
            "nor CIL (does not start with '('): set format" % spec.name)
    return found


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def cil_syntax_error(text):
    """What libsepol's CIL parser would refuse in text (its message), or None.

    semodule parses a .cil only inside the policy transaction. The same rules checked here
    (libsepol cil_lexer.l and cil_parser.c: tokens, quoted strings on one line, statements in
    parentheses, balanced parentheses) let check mode fail as the real run would, and the real
    run fail before the transaction. Line marks (``;;*``) are read as comments.
    """
    depth, line, pos = 0, 1, 0
    while pos < len(text):
        char = text[pos]
        if char in "\n\r":
            line += 1
        elif char == ";":
            while pos + 1 < len(text) and text[pos + 1] not in "\n\r":
                pos += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "Close parenthesis without matching open at line %d" % line
        elif char == '"' or char in CIL_SYMBOL_CHARS:
            end = _cil_token_end(text, pos)
            if end is None:
                return "Invalid token '\"' at line %d" % line
            if depth == 0:
                return "Symbol not inside parenthesis at line %d" % line
            pos = end - 1
        elif char not in " \t":
            return "Invalid token '%s' at line %d" % (char, line)
        pos += 1
    if depth > 0:
        return "Open parenthesis without matching close at line %d" % line
    return None


def _cil_token_end(text, pos):
    """Where the symbol or quoted string starting at pos ends; None for an unclosed quote."""
    if text[pos] == '"':
        end = pos + 1
        while end < len(text) and text[end] not in '"\n':
            end += 1
        return end + 1 if end < len(text) and text[end] == '"' else None
    end = pos
    while end < len(text) and text[end] in CIL_SYMBOL_CHARS:
        end += 1
    return end


class Source(object):
    """One module's input, read and checked without the host: the source format, its text (a
    .pp's bytes in ``data``), file contexts and interface, where it came from."""

    def __init__(self, spec, fmt=None, text=None, data=None, fc_text=None, if_text=None, origin=None,
                 generated=None, denials=None):
        self.spec = spec
        self.format = fmt
        self.text = text
        self.data = data
        self.fc_text = fc_text
        self.if_text = if_text
        self.origin = origin
        self.generated = generated
        self.denials = denials

    @property
    def name(self):
        return self.spec.name


def read_source(spec):
    """Read one spec's source and check all the host is not needed for: the files can be read,
    the source is not empty, a .te declares this module, CIL parses, a .pp holds this module.
    A spec without source (rollback, state changes) gives a Source with no format."""
    if not spec.has_source:
        return Source(spec)
    name = spec.name
    fc_text = spec.fc_content if spec.fc_src is None else _read_option(spec, "fc_src")
    if_text = spec.if_content if spec.if_src is None else _read_option(spec, "if_src")
    if spec.avc is not None:
        rules = parse_denials(spec.avc)
        if not rules:
            raise SelinuxModuleError("module %s: avc holds no AVC or USER_AVC denial records "
                                     "(give audit log lines or ausearch -m AVC,USER_AVC output)" % name)
        generated = generate_te(name, rules)
        source = Source(spec, "te", generated, None, fc_text, if_text, "avc", generated, len(rules))
    elif spec.src is not None:
        fmt = _format_of(spec)
        data = _read_option(spec, "src", binary=True)
        if not data.strip():
            raise SelinuxModuleError("module %s: src %s is empty: give a file holding a .te, .cil or .pp "
                                     "module" % (name, spec.src))
        if fmt == "pp":
            _check_pp_name(name, data)
            source = Source(spec, fmt, None, data, fc_text, if_text, fmt)
        else:
            source = Source(spec, fmt, data.decode("utf-8", "replace"), None, fc_text, if_text, fmt)
    else:
        if not spec.content.strip():
            raise SelinuxModuleError("module %s: content is empty: give the text of a .te or .cil module"
                                     % name)
        fmt = _format_of(spec, spec.content)
        if fmt == "pp":
            raise SelinuxModuleError("module %s: a .pp is binary: give it as src, not content" % name)
        source = Source(spec, fmt, spec.content, None, fc_text, if_text, fmt)
    if fc_text is not None and source.format != "te":
        raise SelinuxModuleError("module %s: file contexts (fc_src, fc_content) go with a .te "
                                 "source; a %s carries its own" % (name, source.format))
    if source.format == "te":
        _check_te_name(name, source.text)
    elif source.format == "cil":
        error = cil_syntax_error(source.text)
        if error:
            raise SelinuxModuleError("module %s: the CIL source does not parse: %s (semodule refuses it)"
                                     % (name, error))
    return source


def prepare(specs):
    """Validate the specs and read their sources: every refusal about the input, none about
    the host, before anything is built or changed."""
    validate(specs)
    return [read_source(spec) for spec in specs]


def _check_te_name(name, text):
    declared = TE_MODULE_RE.search(text)
    if declared is None:
        raise SelinuxModuleError("module %s: the .te source has no 'module %s 1.0;' statement"
                                 % (name, name))
    if declared.group("name") != name:
        raise SelinuxModuleError("module %s: the .te source declares module %s; the names must match"
                                 % (name, declared.group("name")))


def _compile_te(name, text, fc_text, host, tools, run, workdir):
    for tool in ("checkmodule", "semodule_package"):
        if not getattr(tools, tool):
            raise SelinuxModuleError("module %s: compiling a .te needs %s (Debian: checkpolicy and "
                                     "semodule-utils; RHEL: checkpolicy and policycoreutils)"
                                     % (name, tool))
    base = os.path.join(workdir, name)
    atomic_write(base + ".te", text)
    argv = [tools.checkmodule] + (["-M"] if host.mls else []) + ["-m", "-o", base + ".mod", base + ".te"]
    _compiler_step(run, argv, name, workdir)
    argv = [tools.semodule_package, "-o", base + ".pp", "-m", base + ".mod"]
    if fc_text is not None:
        atomic_write(base + ".fc", fc_text)
        argv += ["-f", base + ".fc"]
    _compiler_step(run, argv, name, workdir)
    return _read(base + ".pp", binary=True, what="compiled module")


def _compiler_step(run, argv, name, workdir):
    try:
        checked(run, argv, what=os.path.basename(argv[0]))
    except CommandError as exc:
        # the compiler names its temporary input; the user knows the module by name
        message = str(exc).replace(workdir + os.sep, "")
        raise SelinuxModuleError("module %s does not compile: %s" % (name, message))


def _cil_of_pp(name, data, tools, run, workdir):
    if not tools.pp_converter:
        raise SelinuxModuleError("the policy package converter (hll/pp, from policycoreutils) is "
                                 "missing: looked for %s" % ", ".join(PP_CONVERTERS))
    source = os.path.join(workdir, name + ".check.pp")
    target = os.path.join(workdir, name + ".check.cil")
    atomic_write(source, data)
    try:
        checked(run, [tools.pp_converter, source, target], what="hll/pp")
    except CommandError as exc:
        raise SelinuxModuleError("module %s: the policy package cannot be converted to CIL: %s"
                                 % (name, exc))
    return _read(target, binary=True, what="converted module")


def _compiled(source, host, tools, run, workdir):
    """(installed format, bytes semodule installs, the CIL libsemanage will keep)."""
    name = source.name
    if source.format == "te":
        data = _compile_te(name, source.text, source.fc_text, host, tools, run, workdir)
        return "pp", data, _cil_of_pp(name, data, tools, run, workdir)
    if source.format == "pp":
        _check_pp_mls(name, source.data, host)
        return "pp", source.data, _cil_of_pp(name, source.data, tools, run, workdir)
    data = source.text.encode("utf-8")
    return "cil", data, data


def build(source, host, tools, run, workdir):
    """Compile one read source into what semodule installs; SelinuxModuleError on any error."""
    installed_format, data, cil = _compiled(source, host, tools, run, workdir)
    spec = source.spec
    sources = dict((ext, value) for ext, value in (("avc", spec.avc),
                                                   ("te", source.text if source.format == "te" else None),
                                                   ("fc", source.fc_text), ("if", source.if_text))
                   if value is not None)
    return Build(source.name, installed_format, data, _sha256(cil), sources, source.origin,
                 generated=source.generated, denials=source.denials)


def _check_pp_name(name, data):
    inner, dummy = pp_info(data)
    if inner != name:
        raise SelinuxModuleError("module %s: the policy package is module %s inside; semodule "
                                 "would install it as %s. Rebuild it or use name: %s"
                                 % (name, inner, inner, inner))


def _check_pp_mls(name, data, host):
    dummy, mls = pp_info(data)
    if mls != host.mls:
        raise SelinuxModuleError("module %s: the policy package was built %s MLS, this host's "
                                 "policy is %s; rebuild it (checkmodule %s)"
                                 % (name, "with" if mls else "without",
                                    "MLS/MCS" if host.mls else "not MLS", "-M" if host.mls else "without -M"))


# ---------------------------------------------------------------- the policy store

class Installed(object):
    """One module at one priority, as semodule lists it."""

    def __init__(self, name, priority, lang, enabled, sha256=None):
        self.name = name
        self.priority = priority
        self.lang = lang
        self.enabled = enabled
        self.sha256 = sha256

    def as_dict(self):
        return dict(priority=self.priority, format=self.lang, enabled=self.enabled,
                    sha256=self.sha256)


def parse_module_list(text):
    """``semodule --list-modules=full [--checksum]`` -> {name: {priority: Installed}}."""
    modules = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        checksum = [f.split(":", 1)[1] for f in fields[3:] if f.startswith("sha256:")]
        entry = Installed(fields[1], int(fields[0]), fields[2], "disabled" not in fields[3:],
                          checksum[0] if checksum else None)
        modules.setdefault(entry.name, {})[entry.priority] = entry
    return modules


def store_checksum(host, name, priority):
    """SHA-256 of a module's CIL read from the store, as semodule --checksum computes it."""
    path = os.path.join(host.store_root, host.policy_type, "active", "modules", str(priority),
                        name, "cil")
    data = _read(path, binary=True, what="policy store file")
    if data[:3] == b"BZh":
        data = bz2.decompress(data)
    return _sha256(data)


def read_installed(run, tools, host, names):
    """Installed modules (every name, every priority), with checksums for ``names``.

    policycoreutils before 3.4 has no --checksum: the checksums of the modules asked about are
    then computed from the store's CIL files, exactly as semodule would.
    """
    rc, out, err = run([tools.semodule, "--list-modules=full", "--checksum"])
    if rc == 0:
        return parse_module_list(out)
    if "checksum" not in (err + out) and "unrecognized" not in (err + out):
        raise CommandError([tools.semodule, "--list-modules=full", "--checksum"], rc, out, err,
                           what="semodule")
    modules = parse_module_list(checked(run, [tools.semodule, "--list-modules=full"], what="semodule"))
    for name in names:
        for entry in modules.get(name, {}).values():
            entry.sha256 = store_checksum(host, name, entry.priority)
    return modules


# ---------------------------------------------------------------- kept versions

class VersionStore(object):
    """STATE_DIR/NAME/: one directory per version (by checksum) and index.json with the history.

    The history lists checksums in the order they were last installed, newest last; a rollback
    drops the newest. At most ``keep`` versions are kept; the oldest go first, never the current.
    """

    def __init__(self, root, keep=DEFAULT_KEEP_VERSIONS, clock=time.time):
        if keep < 2:
            raise SelinuxModuleError("keep_versions must be at least 2 (the current version and "
                                     "one to roll back to), not %s" % keep)
        check_state_dir(root)
        self.root = root
        self.keep = keep
        self.clock = clock

    def module_dir(self, name):
        return os.path.join(self.root, name)

    def index_path(self, name):
        return os.path.join(self.module_dir(name), "index.json")

    def load(self, name):
        path = self.index_path(name)
        if not os.path.exists(path):
            return {"history": [], "versions": {}}
        try:
            with open(path) as handle:
                index = json.load(handle)
        except ValueError as exc:
            raise SelinuxModuleError("the version index %s is damaged (%s): move it aside to start "
                                     "a new history" % (path, exc))
        index.setdefault("history", [])
        index.setdefault("versions", {})
        return index

    def version_path(self, name, sha256, fmt):
        return os.path.join(self.module_dir(name), sha256, "%s.%s" % (name, fmt))

    def has(self, name, sha256, fmt):
        return os.path.exists(self.version_path(name, sha256, fmt))

    def add(self, built):
        """Write a built module and its sources; returns the new directory, or None if kept."""
        if self.has(built.name, built.sha256, built.format):
            return None
        directory = os.path.join(self.module_dir(built.name), built.sha256)
        _makedirs(self.module_dir(built.name))
        _makedirs(directory)
        for ext, text in sorted(built.sources.items()):
            atomic_write(os.path.join(directory, "%s.%s" % (built.name, ext)), text, mode=0o600)
        atomic_write(self.version_path(built.name, built.sha256, built.format), built.data,
                     mode=0o600)
        return directory

    def save(self, name, index):
        _makedirs(self.module_dir(name))
        atomic_write(self.index_path(name), json.dumps(index, indent=1, sort_keys=True) + "\n",
                     mode=0o600)

    def record(self, index, sha256, fmt, origin):
        """The index after installing a version: it becomes the newest in the history."""
        now = int(self.clock())
        versions = dict(index["versions"])
        version = dict(versions.get(sha256) or {"format": fmt, "origin": origin, "added": now})
        version["installed"] = now
        versions[sha256] = version
        history = [h for h in index["history"] if h != sha256] + [sha256]
        return {"history": history, "versions": versions}

    def prune(self, name, index, current):
        """Drop the oldest versions beyond ``keep``; returns the pruned index."""
        protected = set([current] + index["history"][-1:])
        by_age = sorted(index["versions"], key=lambda h: (index["versions"][h].get("installed", 0), h))
        excess = len(by_age) - self.keep
        for sha256 in by_age:
            if excess <= 0:
                break
            if sha256 in protected:
                continue
            shutil.rmtree(os.path.join(self.module_dir(name), sha256), ignore_errors=True)
            del index["versions"][sha256]
            excess -= 1
        index["history"] = [h for h in index["history"] if h in index["versions"]]
        return index


def check_state_dir(root):
    """Refuse a state_dir the real run could not create or write into, so that check mode
    (which writes nothing there) fails as the real run would."""
    existing = os.path.abspath(root)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is not a directory" if existing == os.path.abspath(root) else \
            "cannot be created: %s is not a directory" % existing
        raise SelinuxModuleError("state_dir %s %s: give the path of a directory, or of one to create "
                                 "(default %s)" % (root, where, DEFAULT_STATE_DIR))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SelinuxModuleError("state_dir %s: %s is not writable: give a directory on a writable "
                                 "filesystem (default %s)" % (root, existing, DEFAULT_STATE_DIR))


def _makedirs(path):
    """A directory only root may enter (with its parents, which get the usual 0755)."""
    try:
        os.makedirs(path, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    else:
        os.chmod(path, 0o700)


def rollback_target(name, index, current):
    """(checksum to reinstall, history after) for a rollback; SelinuxModuleError if none."""
    history = list(index["history"])
    if history and history[-1] == current:
        history.pop()
    if not history:
        raise SelinuxModuleError("module %s: no earlier version to roll back to (kept: %s)"
                                 % (name, ", ".join(h[:12] for h in index["history"]) or "none"))
    return history[-1], history


# ---------------------------------------------------------------- plan

class Change(object):
    """What one module needs: the semodule operations and the bookkeeping after them."""

    def __init__(self, spec, before, built=None):
        self.spec = spec
        self.before = before
        self.build = built
        self.version = built.sha256 if built is not None else None
        self.history = None
        self.install = False
        self.remove = False
        self.enable = None
        self.actions = []
        self.warnings = []

    @property
    def name(self):
        return self.spec.name

    @property
    def changed(self):
        return bool(self.actions)


def plan_one(spec, installed, priority, built, index):
    """The change one module needs, from what is installed and what was built."""
    entries = installed.get(spec.name, {})
    ours = entries.get(priority)
    change = Change(spec, ours, built)
    if spec.state == "absent":
        if ours is not None:
            change.remove = True
            change.actions.append("remove")
        others = sorted(p for p in entries if p != priority)
        if others:
            change.warnings.append("module %s stays installed at priority %s" % (
                spec.name, ", ".join(str(p) for p in others)))
        return change
    if spec.rollback:
        change.version, change.history = rollback_target(spec.name, index, ours.sha256 if ours else None)
        change.install = True
        change.actions.append("rollback")
    elif built is not None and (ours is None or ours.sha256 != built.sha256):
        change.install = True
        change.actions.append("upgrade" if ours is not None else "install")
    elif built is None and not entries:
        raise SelinuxModuleError("module %s is not installed: give a source (src, content or avc) "
                                 "to install it %s" % (spec.name, spec.state))
    wanted = spec.state != "disabled"
    enabled = all(e.enabled for e in entries.values()) if entries else True
    if enabled != wanted:
        change.actions.append("enable" if wanted else "disable")
    if enabled != wanted or change.install:
        # said explicitly with every install: whether semodule -i keeps a name's disabled flag
        # has varied between libsemanage releases
        change.enable = wanted
    top = max(entries) if entries else None
    if change.install and top is not None and top > priority:
        change.warnings.append("module %s at priority %d overrides the one installed at %d"
                               % (spec.name, top, priority))
    return change


def transaction_argv(changes, priority, semodule, staged):
    """One semodule command for every change: libsemanage commits it as one transaction.

    ``staged`` maps each module to install to the file semodule reads.
    """
    operations = []
    for change in changes:
        if change.install:
            operations += ["-i", staged[change.name]]
        if change.remove:
            operations += ["-r", change.name]
        if change.enable is not None:
            operations += ["-e" if change.enable else "-d", change.name]
    return [semodule, "-X", str(priority)] + operations if operations else None


# ---------------------------------------------------------------- the whole run

class Manager(object):
    """Build, plan and apply a set of module specs against one host."""

    def __init__(self, run, tools, host, store, priority=DEFAULT_PRIORITY):
        check_priority(priority)
        self.run = run
        self.tools = tools
        self.host = host
        self.store = store
        self.priority = priority

    def installed(self, names):
        return read_installed(self.run, self.tools, self.host, names)

    def plan(self, sources, workdir):
        """Build every read source (``prepare``) and compare with the store: (installed, [Change])."""
        builds = {}
        for source in sources:
            if source.format is not None:
                builds[source.name] = build(source, self.host, self.tools, self.run, workdir)
        installed = self.installed([s.name for s in sources])
        changes = [plan_one(source.spec, installed, self.priority, builds.get(source.name),
                            self.store.load(source.name)) for source in sources]
        return installed, changes

    def stage(self, changes, workdir):
        """Copies for semodule to read, in the run's temporary directory.

        Not the kept versions themselves: the policy lets semodule (semanage_t) map files in
        temporary and home directories, not in /var/lib (var_lib_t).
        """
        staged = {}
        directory = os.path.join(workdir, "install")
        _makedirs(directory)
        for change in changes:
            if not change.install:
                continue
            if change.build is not None:
                fmt, data = change.build.format, change.build.data
            else:
                fmt = self.store.load(change.name)["versions"][change.version]["format"]
                data = _read(self.store.version_path(change.name, change.version, fmt), binary=True,
                             what="kept version")
            staged[change.name] = os.path.join(directory, "%s.%s" % (change.name, fmt))
            atomic_write(staged[change.name], data, mode=0o600)
        return staged

    def apply(self, changes, workdir):
        """Run the one transaction; the policy and the kept versions change together or not at all.

        Returns the semodule argv run, or None when nothing needed a transaction.
        """
        lock = _lock(self.store.root)
        try:
            argv = transaction_argv(changes, self.priority, self.tools.semodule,
                                    self.stage(changes, workdir))
            if argv is not None:
                self._transaction(changes, argv)
            for change in changes:
                self._bookkeep(change)
            return argv
        finally:
            os.close(lock)

    def _transaction(self, changes, argv):
        added = []
        try:
            for change in changes:
                if change.install and change.build is not None:
                    added.append(self.store.add(change.build))
            checked(self.run, argv, what="semodule")
        except BaseException as exc:
            for directory in added:
                if directory:
                    _remove_version(directory)
            if isinstance(exc, CommandError):
                raise SelinuxModuleError("the policy transaction failed and changed nothing: %s" % exc)
            raise

    def _bookkeep(self, change):
        """Record an installed version; also keep a module that already matched its source."""
        built = change.build
        if not change.install:
            already = (built is not None and change.before is not None
                       and change.before.sha256 == built.sha256)
            if not already:
                return
            index = self.store.load(change.name)
            if index["history"][-1:] == [built.sha256] and self.store.has(built.name, built.sha256, built.format):
                return
            self.store.add(built)
        index = self.store.load(change.name)
        if change.history is not None:
            index = {"history": change.history, "versions": index["versions"]}
        if built is not None:
            index = self.store.record(index, built.sha256, built.format, built.origin)
        else:
            version = index["versions"][change.version]
            index = self.store.record(index, change.version, version["format"], version["origin"])
        self.store.save(change.name, self.store.prune(change.name, index, change.version))


def _remove_version(directory):
    shutil.rmtree(directory, ignore_errors=True)
    try:
        # the module's directory too, when this was its first version
        os.rmdir(os.path.dirname(directory))
    except OSError:
        pass


def _lock(root):
    _makedirs(root)
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def check_priority(priority):
    if not 1 <= priority <= 999:
        raise SelinuxModuleError("priority must be 1-999 (local modules: 400), not %s" % priority)


def decide(sources, manager, warnings=()):
    """Build the read sources (``prepare``) and compare them with the store: a ``_runner.Plan``
    whose result (modules, transaction, semodule_command) is check mode's answer, the store as it will list, and
    whose ``apply`` runs the one transaction, keeps the versions and returns the result as the
    store lists after. ``warnings`` are the caller's, given with the plan's own."""
    with _workdir() as workdir:
        before, changes = manager.plan(sources, workdir)

    def answer(after, command):
        dummy, modules, dummy, diff, found = report(changes, before, after, manager, command)
        decided.diff, decided.warnings = diff, found + list(warnings)
        # the same two keys as selinux_settings: whether a transaction committed, and its command
        return dict(modules=modules, transaction=command is not None, semodule_command=command)

    def apply():
        # also when nothing changes: a module that already matched its source is kept as a version
        with _workdir() as workdir:
            command = manager.apply(changes, workdir)
        return answer(manager.installed([c.name for c in changes]) if command else before, command)

    decided = Plan(any(c.changed for c in changes), None, apply=apply)
    decided.result = answer(predicted(changes, before, manager.priority), None)
    return decided


@contextlib.contextmanager
def _workdir():
    """A private temporary directory for compiling and staging, gone afterwards."""
    workdir = tempfile.mkdtemp(prefix="kvmsec-selinux-")
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- report

def _listing(entries_by_name, names):
    lines = []
    for name in names:
        for priority, entry in sorted(entries_by_name.get(name, {}).items()):
            lines.append("%03d %s %s%s sha256:%s" % (priority, name, entry.lang,
                                                     "" if entry.enabled else " disabled",
                                                     entry.sha256 or "?"))
    return "\n".join(lines) + ("\n" if lines else "")


def predicted(changes, installed, priority):
    """What the store will list after ``changes`` (check mode reports this as the after)."""
    after = {}
    for name, entries in installed.items():
        after[name] = dict((p, Installed(e.name, e.priority, e.lang, e.enabled, e.sha256))
                           for p, e in entries.items())
    for change in changes:
        entries = after.setdefault(change.name, {})
        if change.remove:
            entries.pop(priority, None)
        if change.install:
            fmt = change.build.format if change.build is not None else "pp"
            entries[priority] = Installed(change.name, priority, fmt, True, change.version)
        if change.enable is not None:
            for entry in entries.values():
                entry.enabled = change.enable
    return after


def _versions(store, name, current):
    index = store.load(name)
    history = index["history"]
    result = []
    for sha256, info in sorted(index["versions"].items(), key=lambda kv: (kv[1].get("installed", 0), kv[0])):
        result.append(dict(sha256=sha256, format=info.get("format"), origin=info.get("origin"),
                           added=info.get("added"), installed=info.get("installed"),
                           current=sha256 == current,
                           rollback_target=len(history) > 1 and sha256 == history[-2]))
    return result


def report(changes, before, after, manager, transaction):
    names = [c.name for c in changes]
    modules, diffs, warnings = [], [], []
    for change in changes:
        entry = after.get(change.name, {}).get(manager.priority)
        item = dict(name=change.name, state=change.spec.state, priority=manager.priority,
                    changed=change.changed, actions=change.actions,
                    before=change.before.as_dict() if change.before else None,
                    after=entry.as_dict() if entry else None,
                    versions=_versions(manager.store, change.name, entry.sha256 if entry else None))
        built = change.build
        if built is not None:
            item["source_format"] = built.origin
            item["sha256"] = built.sha256
            if built.generated is not None:
                item["generated"] = built.generated
                item["denials"] = built.denials
                diffs.append(dict(before="", after=built.generated,
                                  before_header="%s.te" % change.name,
                                  after_header="%s.te (generated from %d denied access rules)"
                                  % (change.name, built.denials)))
        modules.append(item)
        warnings.extend(change.warnings)
    diffs.insert(0, dict(before=_listing(before, names), after=_listing(after, names),
                         before_header="semodule --list-modules=full (before)",
                         after_header="semodule --list-modules=full (after)"))
    return any(c.changed for c in changes), modules, transaction, diffs, warnings
