# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel settings of a KVM host: sysctl values, kept in one drop-in file and set in the running
kernel, and kernel modules kept from loading or given options (one modprobe.d file).

Pure Python over a root directory (the module passes "/", tests a temporary tree): plan() reads
the host and computes what would change, apply() carries a plan out and puts everything back
when a step fails. Private to the collection: not a public API.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import read_text
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

SYSCTL_NAME = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_/:@+-]+)+$")
MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
PARAMETER_NAME = re.compile(r"^[A-Za-z0-9_]+$")
# where systemd-sysctl reads drop-ins, in precedence order for files of the same name
SYSCTL_DIRS = ("etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d")
HEADER = "# Managed by kvmsec.hardening (%s): edits here are replaced on the next run.\n"
# Writing a forwarding switch resets accept_redirects and friends: forwarding goes first. Some
# settings cannot be set back until the next boot: they go last, so a failure before them leaves
# nothing that cannot be put back.
ONE_WAY = ("kernel.kexec_load_disabled", "kernel.unprivileged_bpf_disabled", "kernel.modules_disabled")
TRUE_WORDS = ("1", "y", "yes", "on", "true")
FALSE_WORDS = ("0", "n", "no", "off", "false")


class KernelError(Exception):
    pass


class Needed(object):
    """What the host lacks, read before anything is written: files, live values, module reloads."""

    def __init__(self):
        self.files = []
        self.live = []
        self.missing = []
        self.loaded = []
        self.reload_required = []
        self.reloads = []
        self.overridden = []
        self.wanted = []

    @property
    def changed(self):
        return bool(self.files or self.live or self.reloads)


def _path(root, relative):
    return os.path.join(root, relative.lstrip("/"))


def _read(path):
    return read_text(path, default="") if os.path.exists(path) else None


def normalize(value):
    """sysctl compares values word by word: '32768\\t60999' is '32768 60999'."""
    return " ".join(str(value).split())


def proc_path(name):
    """proc/sys path of a sysctl name; '/' inside a name stands for a dot (eth0/100 is eth0.100)."""
    return "proc/sys/" + "/".join(part.replace("/", ".") for part in name.split("."))


def write_order(name):
    if name == "net.ipv4.ip_forward" or name.endswith(".forwarding"):
        return 0
    return 2 if name in ONE_WAY else 1


def _scalar(value):
    # a bool would be written True/False, which no sysctl or module parameter reads
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def check(sysctl, blacklist, options, sysctl_file=None, modprobe_file=None):
    """Refuse bad input before the host is read, naming the option and what is valid."""
    for option, path, reader in (("sysctl_file", sysctl_file, "systemd-sysctl"), ("modprobe_file", modprobe_file, "modprobe")):
        if path is not None and (not os.path.isabs(path) or not path.endswith(".conf") or re.search(r"\s", path)):
            raise KernelError("%s: %s must end in .conf (%s reads nothing else) and be an absolute path "
                              "without spaces, such as /etc/%s.d/90-kvmsec.conf"
                              % (option, path, reader, "sysctl" if option == "sysctl_file" else "modprobe"))
    for name, value in sysctl.items():
        if not SYSCTL_NAME.match(name):
            raise KernelError("sysctl: %r is not a sysctl name (dotted, as sysctl -a prints them, "
                              "for example kernel.kptr_restrict)" % name)
        if not _scalar(value) or not normalize(value) or "\n" in str(value):
            raise KernelError("sysctl: %s needs a value on one line, a number or text (got %r)" % (name, value))
    for name in blacklist:
        if not MODULE_NAME.match(name):
            raise KernelError("blacklist: %r is not a kernel module name (letters, digits, _ and -)" % name)
    for name, parameters in options.items():
        if not MODULE_NAME.match(name):
            raise KernelError("options: %r is not a kernel module name (letters, digits, _ and -)" % name)
        if not isinstance(parameters, dict) or not parameters:
            raise KernelError("options: %s needs a dict of parameter: value" % name)
        for parameter, value in parameters.items():
            if not PARAMETER_NAME.match(str(parameter)) or not _scalar(value) or not str(value).strip():
                raise KernelError("options: %s: %r=%r is not a module parameter and a value" % (name, parameter, value))
            if re.search(r"\s", str(value).strip()):
                raise KernelError("options: %s: %s=%r has a space: modprobe would read the rest as another "
                                  "parameter; give one word (lists comma-separated, as the module takes them)"
                                  % (name, parameter, value))
    overlap = set(_module(name) for name in blacklist) & set(_module(name) for name in options)
    if overlap:
        raise KernelError("blacklist and options both name %s: a module kept from loading takes no options"
                          % ", ".join(sorted(overlap)))


def _module(name):
    # the kernel knows usb-storage as usb_storage
    return name.replace("-", "_")


def render_sysctl(sysctl, owner):
    lines = ["%s = %s\n" % (name, normalize(sysctl[name])) for name in sorted(sysctl)]
    return HEADER % owner + "".join(lines)


def render_modprobe(blacklist, options, owner):
    lines = []
    for name in sorted(set(blacklist)):
        # blacklist stops loading by alias; install /bin/false also stops modprobe NAME
        lines.append("blacklist %s\ninstall %s /bin/false\n" % (name, name))
    for name in sorted(options):
        words = " ".join("%s=%s" % (key, normalize(options[name][key])) for key in sorted(options[name]))
        lines.append("options %s %s\n" % (name, words))
    return HEADER % owner + "".join(lines)


def sysctl_files(root, own_path):
    """Drop-ins systemd-sysctl reads, in the order it applies them (a later file wins)."""
    chosen = {}
    for directory in SYSCTL_DIRS:
        try:
            names = os.listdir(_path(root, directory))
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf") and name not in chosen:
                chosen[name] = _path(root, directory + "/" + name)
    own = os.path.basename(own_path)
    chosen[own] = _path(root, own_path)
    ordered = [chosen[name] for name in sorted(chosen)]
    # procps' sysctl --system reads /etc/sysctl.conf last; Debian also links it as 99-sysctl.conf
    conf = _path(root, "etc/sysctl.conf")
    if os.path.exists(conf) and os.path.realpath(conf) not in [os.path.realpath(path) for path in ordered]:
        ordered.append(conf)
    return ordered


def parse_sysctl(text):
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        name, value = line.split("=", 1)
        # a leading - only means "ignore a failure"; kernel/sysrq is the same as kernel.sysrq
        name = name.strip().lstrip("-")
        if "." not in name:
            name = name.replace("/", ".")
        values[name] = normalize(value)
    return values


def overrides(root, own_path, wanted):
    """(name, file, value) of the wanted settings a drop-in read after ours sets otherwise."""
    files = sysctl_files(root, own_path)
    own = _path(root, own_path)
    later = files[files.index(own) + 1:]
    found = []
    for path in later:
        for name, value in sorted(parse_sysctl(_read(path) or "").items()):
            if name in wanted and value != normalize(wanted[name]):
                found.append({"name": name, "file": "/" + os.path.relpath(path, root), "value": value})
    return found


def _same_parameter(running, wanted):
    running, wanted = normalize(running).lower(), normalize(wanted).lower()
    if running in TRUE_WORDS and wanted in TRUE_WORDS or running in FALSE_WORDS and wanted in FALSE_WORDS:
        return True
    return running == wanted


def module_users(root):
    """{module: use count} from /proc/modules."""
    users = {}
    for line in (_read(_path(root, "proc/modules")) or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            users[fields[0]] = int(fields[2])
    return users


def plan(root, owner, sysctl=None, sysctl_file=None, blacklist=None, options=None, modprobe_file=None,
         reload_modules=False):
    """The changes that bring the host to the wanted settings; nothing is written. A loaded
    module running with other options is reloaded only when allowed and nothing uses it."""
    sysctl, blacklist, options = sysctl or {}, blacklist or [], options or {}
    check(sysctl, blacklist, options, sysctl_file, modprobe_file)
    result = Needed()
    if sysctl_file:
        supported = {}
        for name in sorted(sysctl, key=lambda item: (write_order(item), item)):
            path = _path(root, proc_path(name))
            if not os.path.exists(path):
                result.missing.append(name)
                continue
            if not os.stat(path).st_mode & 0o222:
                raise KernelError("sysctl: %s is read-only in this kernel (%s): it cannot be set" % (name, "/" + proc_path(name)))
            supported[name] = sysctl[name]
            result.wanted.append({"name": name, "path": path, "after": normalize(sysctl[name])})
            running = normalize(_read(path))
            if running != normalize(sysctl[name]):
                result.live.append({"name": name, "path": path, "before": running,
                                    "after": normalize(sysctl[name])})
        _file_change(result, root, _path(root, sysctl_file), render_sysctl(supported, owner))
        result.overridden = overrides(root, sysctl_file, supported)
    if modprobe_file:
        _file_change(result, root, _path(root, modprobe_file), render_modprobe(blacklist, options, owner))
        users = module_users(root)
        result.loaded = sorted(name for name in set(blacklist) if _module(name) in users)
        for name in sorted(options):
            if _module(name) not in users:
                continue
            for parameter in sorted(options[name]):
                path = _path(root, "sys/module/%s/parameters/%s" % (_module(name), parameter))
                running = _read(path)
                if running is None or _same_parameter(running, options[name][parameter]):
                    continue
                item = {"module": name, "parameter": parameter, "running": normalize(running),
                        "configured": normalize(options[name][parameter]), "users": users[_module(name)],
                        "path": path}
                if reload_modules and item["users"] == 0:
                    result.reloads.append(item)
                else:
                    result.reload_required.append(item)
    return result


def _file_change(result, root, path, text):
    change = _files.change_to(path, text, shown="/" + os.path.relpath(path, root))
    if change:
        result.files.append(change)


def apply(plan_, run=None):
    """Write the files, then the live values, then reload the modules planned for it (``run``:
    the cores' command runner); on a failure put back what was done and raise."""
    stuck = []

    def live():
        done = []
        try:
            _set_live(plan_, run, done)
        except Exception:
            stuck.extend(_roll_back_live(done))
            raise

    try:
        _files.write_all(plan_.files, live)
    except _files.NotRestored as exc:
        raise KernelError(str(exc))
    except (IOError, OSError, KernelError, CommandError) as exc:
        what = exc if isinstance(exc, (KernelError, CommandError)) else "cannot write %s: %s" % (
            getattr(exc, "filename", None) or "a setting", exc.strerror or exc)
        if stuck:
            raise KernelError("%s; put back what this run wrote except %s, which the kernel lets go "
                              "back only at the next boot" % (what, ", ".join(stuck)))
        raise KernelError("%s; everything written in this run was put back" % what)


def _set_live(plan_, run, done):
    for change in plan_.live:
        with open(change["path"], "w") as handle:
            handle.write(change["after"] + "\n")
        done.append(change)
    # read every wanted value back: one setting can change another (forwarding resets
    # accept_redirects), and the kernel may clamp a value it accepted
    for wanted in plan_.wanted:
        running = normalize(_read(wanted["path"]))
        if running != wanted["after"]:
            raise KernelError("%s reads %r after the run wrote %r: the kernel did not keep it"
                              % (wanted["name"], running, wanted["after"]))
    for name in sorted(set(item["module"] for item in plan_.reloads)):
        checked(run, ["modprobe", "-r", name], what="modprobe -r %s" % name)
        checked(run, ["modprobe", name], what="modprobe %s" % name)
    for item in plan_.reloads:
        running = _read(item["path"])
        if running is None or not _same_parameter(running, item["configured"]):
            raise KernelError("%s runs with %s=%s after its reload, not %s"
                              % (item["module"], item["parameter"], normalize(running or "?"), item["configured"]))


def _roll_back_live(live):
    """Put back live values; returns the names of those the kernel refused to put back."""
    stuck = []
    for change in reversed(live):
        try:
            with open(change["path"], "w") as handle:
                handle.write(change["before"] + "\n")
        except (IOError, OSError):
            stuck.append(change["name"])
    return sorted(stuck)


def diff(plan_):
    """One diff per changed file, and one for the running kernel's values."""
    diffs = [change.diff() for change in plan_.files]
    if plan_.reloads:
        diffs.append({"before": "".join("%s %s=%s\n" % (i["module"], i["parameter"], i["running"]) for i in plan_.reloads),
                      "after": "".join("%s %s=%s\n" % (i["module"], i["parameter"], i["configured"]) for i in plan_.reloads),
                      "before_header": "loaded modules (reloaded)", "after_header": "loaded modules (reloaded)"})
    if plan_.live:
        diffs.append({"before": "".join("%s = %s\n" % (c["name"], c["before"]) for c in plan_.live),
                      "after": "".join("%s = %s\n" % (c["name"], c["after"]) for c in plan_.live),
                      "before_header": "running kernel (/proc/sys)", "after_header": "running kernel (/proc/sys)"})
    return diffs


def warnings(plan_):
    found = []
    if plan_.missing:
        found.append("not in this kernel, left out: %s" % ", ".join(plan_.missing))
    for item in plan_.overridden:
        found.append("%s is set to %s by %s, read after this file at boot: the next boot undoes it"
                     % (item["name"], item["value"], item["file"]))
    if plan_.loaded:
        found.append("loaded now, kept from loading from the next boot on: %s (unload them with "
                     "modprobe -r when nothing uses them)" % ", ".join(plan_.loaded))
    for item in plan_.reload_required:
        found.append("%s runs with %s=%s; %s takes effect when the module is reloaded%s or the host "
                     "reboots" % (item["module"], item["parameter"], item["running"], item["configured"],
                                  " (%d users now)" % item["users"] if item["users"] else ""))
    return found


def decide(run, owner, sysctl, sysctl_file, blacklist, options, modprobe_file, reload_modules, root="/"):
    """The plan for the module's whole job; owner names the module in the files' header."""
    found = plan(root, owner, sysctl, sysctl_file, blacklist, options, modprobe_file, reload_modules)
    result = dict(
        live=[dict((key, change[key]) for key in ("name", "before", "after")) for change in found.live],
        files=[change.path for change in found.files],
        missing=found.missing,
        overridden=found.overridden,
        loaded=found.loaded,
        reload_required=[dict((key, item[key]) for key in ("module", "parameter", "running", "configured", "users"))
                         for item in found.reload_required],
        reloaded=[dict((key, item[key]) for key in ("module", "parameter", "running", "configured"))
                  for item in found.reloads],
    )
    apply_ = (lambda: apply(found, run)) if found.changed else None
    return Plan(found.changed, result, diff(found), warnings(found), apply_)
