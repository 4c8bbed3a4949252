# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sVirt labels of libvirt guests: plan, allocate, check. Private to the collection: not a public API.

libvirt confines each QEMU process with a label of the host's security driver:

* SELinux: the process runs as ``svirt_t`` (``svirt_tcg_t`` where the policy has it) with an
  MCS level such as ``s0:c208,c224``, and its images are labelled ``svirt_image_t`` with the
  same categories. The kernel lets a process read a file only when the process's categories
  include all of the file's, so two guests with different pairs cannot open each other's
  images. The protection is gone when two guests share a pair, when one guest's categories
  include another's, or when a guest runs unconfined.
* AppArmor: the process runs under a per-guest profile ``libvirt-UUID`` that virt-aa-helper
  generates with the guest's own files; it protects only in enforce mode.

This file plans ``<seclabel>`` elements of domain XML (``xml.etree``), allocates category
pairs that avoid every pair in use on the host and every reserved pair, finds collisions, and
compares what running guests really have - ``/proc/PID/attr/current`` of the QEMU process and
the ``security.selinux`` extended attribute of each image - with their domain XML. The parsing
functions take text, so they are tested on captured output. libvirt is used only through the
collection's libvirt layer (``_libvirt``); this file imports neither libvirt nor Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import functools
import hashlib
import json
import os
import platform
import re
import xml.etree.ElementTree as ET

from ansible_collections.kvmsec.hardening.plugins.module_utils._command import checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import atomic_write, read_text
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import (
    Domain as LibvirtDomain,
    edited,
    find,
    parse,
)
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

MODELS = ("selinux", "apparmor")
TYPES = ("dynamic", "static", "none")
CATEGORY_MAX = 1023
DEFAULT_BASELABEL = "system_u:system_r:svirt_t:s0"
PID_DIR = "/run/libvirt/qemu"
APPARMOR_DIR = "/etc/apparmor.d/libvirt"
SELINUX_XATTR = "security.selinux"
SENSITIVITY_RE = re.compile(r"^s[0-9]+(?:-s[0-9]+)?$")
CATEGORY_RE = re.compile(r"^c([0-9]+)(?:\.c([0-9]+))?$")
APPARMOR_LABEL_RE = re.compile(r"^(\S+)(?: \((\w+)\))?$")


class SvirtError(Exception):
    """Bad input, an unusable host or a collision: the message says what and how to fix it."""


# ---------------------------------------------------------------- contexts and categories

def split_context(context):
    """``user:role:type:level`` -> (user, role, type, level); the level may hold colons."""
    parts = (context or "").split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise SvirtError("%r is not an SELinux context of the form user:role:type:level, "
                         "for example system_u:system_r:svirt_t:s0:c1,c2" % context)
    return tuple(parts)


def level_categories(level):
    """Categories of an MLS/MCS level: ``s0:c1,c2`` -> {1, 2}; ``s0-s0:c0.c3`` -> {0..3}."""
    sensitivity = level.split(":", 1)[0]
    if not SENSITIVITY_RE.match(sensitivity):
        raise SvirtError("%r is not an MCS level such as s0:c1,c2" % level)
    if ":" not in level:
        return frozenset()
    cats = set()
    for item in level.split(":", 1)[1].split(","):
        match = CATEGORY_RE.match(item.strip())
        if not match:
            raise SvirtError("%r in level %r is not a category (c0-c%d or a range cA.cB)"
                             % (item, level, CATEGORY_MAX))
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if high > CATEGORY_MAX or low > high:
            raise SvirtError("categories in %r must lie in c0-c%d" % (level, CATEGORY_MAX))
        cats.update(range(low, high + 1))
    return frozenset(cats)


@functools.lru_cache(maxsize=4096)
def context_categories(context):
    """Categories of a context; memoized (pure), since planning compares every pair of domains."""
    return level_categories(split_context(context)[3])


def parse_categories(text):
    """User input - ``c1,c2``, ``s0:c1,c2`` or a whole context - as a set of categories."""
    text = (text or "").strip()
    if text.count(":") >= 3:
        cats = context_categories(text)
    elif text.startswith("s"):
        cats = level_categories(text)
    else:
        cats = level_categories("s0:" + text)
    if not cats:
        raise SvirtError("%r names no category: give one or two, for example c12,c345" % text)
    return cats


def category_text(cats):
    return ",".join("c%d" % cat for cat in sorted(cats)) if cats else ""


def with_categories(base, cats):
    """The base context (``...:svirt_t:s0``) with the level ``s0:cA,cB``."""
    user, role, kind, level = split_context(base)
    sensitivity = level.split(":", 1)[0].split("-", 1)[0]
    return "%s:%s:%s:%s:%s" % (user, role, kind, sensitivity, category_text(cats))


def clean_label(raw):
    """A label as the kernel hands it out (``/proc/PID/attr/current``, xattr): no NUL, no newline."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return raw.replace("\0", "").strip()


def apparmor_state(label):
    """``libvirt-UUID (enforce)`` -> ("libvirt-UUID", "enforce"); ``unconfined`` -> (None, "unconfined")."""
    label = clean_label(label)
    match = APPARMOR_LABEL_RE.match(label)
    if not match or match.group(1) == "unconfined":
        return None, "unconfined"
    return match.group(1), match.group(2) or "enforce"


# ---------------------------------------------------------------- domain XML

def _yes(value, default):
    return default if value is None else value == "yes"


def _seclabel_dict(element):
    kind = element.get("type", "dynamic")
    return {
        "type": kind,
        "model": element.get("model"),
        "relabel": _yes(element.get("relabel"), kind == "dynamic"),
        "label": element.findtext("label"),
        "imagelabel": element.findtext("imagelabel"),
        "baselabel": element.findtext("baselabel"),
    }


def seclabels(xml_text):
    """The domain-level ``<seclabel>`` elements, by model (None for one without a model)."""
    root = parse(xml_text)
    return dict((element.get("model"), _seclabel_dict(element)) for element in root.findall("seclabel"))


def seclabel_for(xml_text, model):
    labels = seclabels(xml_text)
    return labels.get(model) or labels.get(None)


def domain_virt_type(xml_text):
    return parse(xml_text).get("type", "kvm")


def image_disks(disks, model):
    """Disks with a host path (pool volumes resolved): target, path, readonly/shareable and
    whether relabelling is off for the disk."""
    found = []
    for disk in disks:
        if not disk.path:
            continue
        override = disk.source_seclabel(model)
        found.append({
            "target": disk.target,
            "path": disk.path,
            "readonly": disk.readonly,
            "shareable": disk.shareable,
            "relabel": override is None or _yes(override.get("relabel"), True),
        })
    return found


def seclabel_element(desired):
    element = ET.Element("seclabel", {"type": desired["type"], "model": desired["model"]})
    if desired["type"] != "none":
        element.set("relabel", "yes" if desired["relabel"] else "no")
    if desired["type"] == "static":
        ET.SubElement(element, "label").text = desired["label"]
    if desired["type"] == "dynamic" and desired.get("baselabel"):
        ET.SubElement(element, "baselabel").text = desired["baselabel"]
    return element


def seclabel_text(desired):
    """One ``<seclabel>`` as text, for the diff; '' when the domain has none."""
    if desired is None:
        return ""
    return ET.tostring(seclabel_element(desired), encoding="unicode")


def set_seclabel(xml_text, desired):
    """Domain XML with the ``<seclabel>`` of desired's model replaced (other models kept)."""
    def replace(root):
        position = len(root)
        for index, element in enumerate(list(root)):
            if element.tag == "seclabel" and element.get("model") in (desired["model"], None):
                position = min(position, index)
                root.remove(element)
        root.insert(min(position, len(root)), seclabel_element(desired))
    return edited(xml_text, replace)


def comparable(seclabel):
    """What decides equality of two seclabels in a persistent definition."""
    if seclabel is None:
        return None
    kind = seclabel["type"]
    return (kind,
            seclabel["relabel"] if kind != "none" else None,
            seclabel["label"] if kind == "static" else None,
            seclabel.get("baselabel") if kind == "dynamic" else None)


# ---------------------------------------------------------------- host capabilities

def host_security(capabilities_xml):
    """From ``virConnectGetCapabilities``: [(model, {virt type: baselabel})] in libvirt's order."""
    root = parse(capabilities_xml, "capabilities XML")
    models = []
    for secmodel in root.findall("host/secmodel"):
        baselabels = dict((base.get("type"), base.text) for base in secmodel.findall("baselabel"))
        models.append((secmodel.findtext("model"), baselabels))
    return models


def choose_model(requested, models):
    names = [name for name, dummy in models]
    usable = [name for name in names if name in MODELS]
    if requested == "auto":
        if not usable:
            raise SvirtError(
                "libvirt on this host confines guests with no SELinux or AppArmor driver "
                "(security models: %s): enable SELinux or AppArmor and set security_driver in "
                "qemu.conf (the svirt role does both checks)" % (", ".join(names) or "none"))
        return usable[0]
    if requested not in names:
        raise SvirtError("libvirt on this host has no %s security driver (it has: %s)"
                         % (requested, ", ".join(names) or "none"))
    return requested


# ---------------------------------------------------------------- the host as seen from Python

class HostFiles(object):
    """Files the checks read and the labels they may fix, under ``root`` (a tree in tests)."""

    def __init__(self, root="/"):
        self.root = root

    def path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path):
        try:
            with open(self.path(path), "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except (IOError, OSError) as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH, errno.EINVAL, errno.EACCES):
                return None
            raise

    def pid_of(self, name):
        """The QEMU pid libvirt recorded for a running domain, if that process exists."""
        text = self.read("%s/%s.pid" % (PID_DIR, name))
        if not text or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        return pid if os.path.exists(self.path("/proc/%d" % pid)) else None

    def process_label(self, pid):
        text = self.read("/proc/%d/attr/current" % pid)
        return clean_label(text) if text is not None else None

    def file_label(self, path):
        try:
            return clean_label(os.getxattr(self.path(path), SELINUX_XATTR))
        except (IOError, OSError) as exc:
            if exc.errno in (errno.ENOENT, errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise

    def set_file_label(self, path, label):
        # libselinux's setfilecon() stores the context with its terminating NUL: do the same
        os.setxattr(self.path(path), SELINUX_XATTR, label.encode("utf-8") + b"\0")

    def apparmor_files(self, profile):
        return self.read("%s/%s.files" % (APPARMOR_DIR, profile))


class Domain(LibvirtDomain):
    """A libvirt domain with what its running guest really has, observed on the host."""

    def __init__(self, handle, volume_path=None):
        super(Domain, self).__init__(handle, volume_path)
        self.pid = None
        self.process_label = None
        self.image_labels = {}
        self.apparmor_files = None
        self._seclabels = {}

    def seclabel(self, model, live=False):
        """The seclabel of the definition (or of the running guest), parsed once: planning
        looks at every domain for every request."""
        key = (model, live)
        if key not in self._seclabels:
            xml_text = self.live_xml if live else self.config_xml
            self._seclabels[key] = seclabel_for(xml_text, model) if xml_text else None
        return self._seclabels[key]

    def images(self, model):
        """The running guest's disks with a host path."""
        return image_disks(self.disks(live=True), model)


def observe(domain, model, host):
    """Fill in what the running guest really has: process label, image labels or profile files."""
    domain.pid = host.pid_of(domain.name)
    if domain.pid is not None:
        domain.process_label = host.process_label(domain.pid)
    if model == "selinux":
        for disk in domain.images(model):
            domain.image_labels[disk["path"]] = host.file_label(disk["path"])
    else:
        live = domain.seclabel(model, live=True) or {}
        if live.get("label"):
            domain.apparmor_files = host.apparmor_files(live["label"])


# ---------------------------------------------------------------- requests

def check_requests(requests, model, allow_unconfined):
    """Refuse contradictory or unsafe requests before the host is looked at.

    ``model`` None (not known yet) skips the checks that depend on the security driver.
    """
    seen = set()
    for request in requests:
        name = request["name"]
        if name in seen:
            raise SvirtError("guest %s is listed twice; list each guest once" % name)
        seen.add(name)
        kind = request.get("type") or "dynamic"
        if kind not in TYPES:
            raise SvirtError("guest %s: type %r is not one of %s" % (name, kind, ", ".join(TYPES)))
        if kind == "none" and not allow_unconfined:
            raise SvirtError(
                "guest %s: type none runs its QEMU process unconfined, so a compromised guest "
                "can read every other guest's images; use dynamic or static, or set "
                "allow_unconfined (and security_require_confined = 0 in qemu.conf) if this is "
                "really wanted" % name)
        given = [key for key in ("label", "categories") if request.get(key)]
        if given and kind != "static":
            raise SvirtError("guest %s: %s only applies to type static (type is %s)"
                             % (name, " and ".join(given), kind))
        if len(given) == 2:
            raise SvirtError("guest %s: give label or categories, not both" % name)
        if kind == "dynamic" and request.get("relabel") is False:
            raise SvirtError("guest %s: libvirt requires relabel for dynamic labels; "
                             "use type static to keep images as they are labelled" % name)
        if model == "apparmor" and request.get("categories"):
            raise SvirtError("guest %s: AppArmor has no categories; give the profile name as "
                             "label, or use type dynamic" % name)
        if model == "apparmor" and kind == "static" and not request.get("label"):
            raise SvirtError("guest %s: a static AppArmor label needs label (a loaded profile)" % name)
        label = request.get("label")
        if label and (model == "selinux" or (model is None and ":" in label)):
            if not context_categories(label):
                raise SvirtError("guest %s: label %s has no categories, so every guest could "
                                 "read its images; add a pair such as :c1,c2" % (name, label))
        if request.get("categories"):
            parse_categories(request["categories"])


# ---------------------------------------------------------------- categories in use

def live_categories(domain, model):
    if model != "selinux" or not domain.active:
        return None
    live = domain.seclabel(model, live=True)
    label = (live or {}).get("label") or domain.process_label
    if not label or (live or {}).get("type") == "none":
        return None
    return context_categories(label)


def next_categories(domain, seclabel, model):
    """The categories the domain has after its next start, as far as they are known now."""
    if model != "selinux" or seclabel is None:
        return None
    if seclabel["type"] == "static" and seclabel.get("label"):
        return context_categories(seclabel["label"])
    if seclabel["type"] == "dynamic":
        return live_categories(domain, model)
    return None


def occupied(domains, model, planned, exclude):
    """(categories, domain name) in use, except by ``exclude``; planned labels win over config."""
    entries = []
    for domain in domains:
        if domain.name == exclude:
            continue
        seclabel = planned.get(domain.name, domain.seclabel(model))
        for cats in (live_categories(domain, model), next_categories(domain, seclabel, model)):
            if cats:
                entries.append((cats, domain.name))
    return entries


def allocate(uuid, taken):
    """A free pair for this domain: pseudo-random but fixed by its UUID, so a check run predicts
    the pair a real run assigns. Avoids the pairs taken, and pairs that include a taken single
    category or lie inside a taken larger set (either guest could then read the other's images).
    """
    def usable(pair):
        return all(not (cats <= pair or pair <= cats) for cats in taken)

    for attempt in range(4096):
        digest = hashlib.sha256(("%s/%d" % (uuid, attempt)).encode()).digest()
        low, high = sorted((int.from_bytes(digest[:2], "big") % (CATEGORY_MAX + 1),
                            int.from_bytes(digest[2:4], "big") % (CATEGORY_MAX + 1)))
        pair = frozenset((low, high))
        if low != high and usable(pair):
            return pair
    for low in range(CATEGORY_MAX):
        for high in range(low + 1, CATEGORY_MAX + 1):
            if usable(frozenset((low, high))):
                return frozenset((low, high))
    raise SvirtError("no free category pair is left on this host")


# ---------------------------------------------------------------- the plan

class GuestPlan(object):
    def __init__(self, request, domain, before, after, allocated):
        self.request = request
        self.domain = domain
        self.before = before
        self.after = after
        self.allocated = allocated
        self.new_xml = None
        self.image_fixes = []
        self.profile_reload = None

    @property
    def name(self):
        return self.domain.name

    @property
    def changes_definition(self):
        return comparable(self.before) != comparable(self.after)


def desired_seclabel(request, domain, model, baselabels, taken, reserved):
    """(seclabel, allocated) for one request, given the categories others hold."""
    kind = request.get("type") or "dynamic"
    current = domain.seclabel(model)
    desired = {"type": kind, "model": model, "relabel": request.get("relabel", True) is not False,
               "label": None, "baselabel": None}
    if kind == "dynamic" and current and current["type"] == "dynamic":
        desired["baselabel"] = current.get("baselabel")
    if kind != "static":
        return desired, False
    if model == "apparmor":
        desired["label"] = request["label"]
        return desired, False
    base = baselabels.get(domain_virt_type(domain.config_xml)) or DEFAULT_BASELABEL
    if request.get("label"):
        desired["label"] = request["label"]
    elif request.get("categories"):
        desired["label"] = with_categories(base, parse_categories(request["categories"]))
    elif _keepable(current, taken, reserved):
        desired["label"] = current["label"]
    else:
        desired["label"] = with_categories(base, allocate(domain.uuid, list(taken) + list(reserved)))
        return desired, True
    return desired, False


def _keepable(current, taken, reserved):
    """An existing static label stays unless it is shared, reserved or overlaps another guest."""
    if not current or current["type"] != "static" or not current.get("label"):
        return False
    try:
        cats = context_categories(current["label"])
    except SvirtError:
        return False
    return bool(cats) and cats not in reserved and \
        all(not (cats <= other or other <= cats) for other in taken)


def _auto_static(request):
    """A static request without a label: the pair is ours to choose (keep or allocate)."""
    return request.get("type") == "static" and not request.get("label") and \
        not request.get("categories")


def plan(model, requests, domains, reserved=(), baselabels=None, allow_unconfined=False):
    """Decide every requested guest's seclabel; returns (plans, planned seclabels by name).

    Requests whose label does not depend on the others go first; then each static request
    without a label keeps its pair or gets a free one, avoiding every other domain's pair (a
    later such request avoids the earlier ones, so of two guests sharing a pair only the later
    moves). Raises SvirtError on bad input and when domains would share categories after their
    next start, naming them; nothing has been changed then.
    """
    check_requests(requests, model, allow_unconfined)
    reserved = frozenset(parse_categories(item) for item in reserved)
    pairs = [(request, find(domains, request["name"])) for request in requests]
    auto = set(domain.name for request, domain in pairs if _auto_static(request))
    planned = {}
    decided = {}
    for request, domain in sorted(pairs, key=lambda pair: _auto_static(pair[0])):
        undecided = auto - set(planned)
        taken = [cats for cats, name in occupied(domains, model, planned, exclude=domain.name)
                 if name not in undecided]
        after, allocated = desired_seclabel(request, domain, model, baselabels or {}, taken, reserved)
        planned[domain.name] = after
        decided[domain.name] = GuestPlan(request, domain, domain.seclabel(model),
                                         after, allocated)
    shared = [item for item in collisions(domains, model, planned) if item["where"] == "next start"]
    if shared:
        raise SvirtError("; ".join(
            "domains %s share the categories %s, so each can read the other's images: give "
            "one of them type static without a label to move it to a free pair"
            % (" and ".join(item["domains"]), item["categories"]) for item in shared))
    plans = [decided[domain.name] for request, domain in pairs]
    for guest in plans:
        if guest.changes_definition:
            guest.new_xml = set_seclabel(guest.domain.config_xml, guest.after)
    return plans, planned


def collisions(domains, model, planned):
    """Groups of domains sharing categories, now (running) and after their next start."""
    found = []
    for where in ("running", "next start"):
        holders = {}
        for domain in domains:
            if where == "running":
                cats = live_categories(domain, model)
            else:
                seclabel = planned.get(domain.name, domain.seclabel(model))
                cats = next_categories(domain, seclabel, model)
            if cats:
                holders.setdefault(cats, []).append(domain.name)
        for cats, names in sorted(holders.items(), key=lambda item: sorted(item[0])):
            if len(names) > 1:
                found.append({"categories": category_text(cats), "domains": sorted(names),
                              "where": where})
    return found


def overlaps(domains, model, planned):
    """Pairs where one guest's categories strictly include another's: it can read those images."""
    cats_by_name = {}
    for domain in domains:
        seclabel = planned.get(domain.name, domain.seclabel(model))
        for cats in (live_categories(domain, model), next_categories(domain, seclabel, model)):
            if cats:
                cats_by_name.setdefault(domain.name, set()).add(cats)
    problems = []
    for reader, reader_sets in sorted(cats_by_name.items()):
        for owner, owner_sets in sorted(cats_by_name.items()):
            if reader != owner and any(o < r for r in reader_sets for o in owner_sets):
                problems.append("%s can read the images of %s: its categories include all of %s's"
                                % (reader, owner, owner))
    return problems


# ---------------------------------------------------------------- checks of running guests

def check_selinux(domain, model, fix):
    """Compare a running guest's process and image labels with its live seclabel.

    Returns (report, fixes) where fixes are (path, label now, label wanted) for images that
    may be relabelled (``fix``: the user asked for a static label with relabelling).
    """
    live = domain.seclabel(model, live=True) or {}
    report = {"process_label": domain.process_label, "expected_process_label": live.get("label"),
              "images": [], "problems": []}
    fixes = []
    if live.get("type") == "none" or not live:
        report["problems"].append("runs unconfined (no %s label)" % model)
        return report, fixes
    if domain.process_label is None:
        report["problems"].append("QEMU process label could not be read (pid %s)" % domain.pid)
    elif domain.process_label != live.get("label"):
        report["problems"].append("QEMU process runs as %s, the domain says %s"
                                  % (domain.process_label, live.get("label")))
    for disk in domain.images(model):
        image, fixable = _image_status(disk, domain.image_labels.get(disk["path"]), live)
        report["images"].append(image)
        if image["status"] == "mismatch":
            if fix and fixable:
                image["status"] = "fixed"
                fixes.append((disk["path"], image["label"], image["expected"]))
            else:
                report["problems"].append("image %s is labelled %s, expected %s"
                                          % (disk["path"], image["label"], image["expected"]))
    return report, fixes


def _image_status(disk, label, live):
    image = {"path": disk["path"], "label": label, "expected": live.get("imagelabel")}
    reason = None
    if not live.get("relabel"):
        reason = "the domain's label has relabel=no"
    elif not disk["relabel"]:
        reason = "relabelling is turned off for this disk"
    elif disk["readonly"] or disk["shareable"]:
        reason = "read-only and shareable disks carry a shared label"
    elif label is None:
        reason = "no SELinux label could be read"
    if reason:
        image.update(status="skipped", reason=reason)
        return image, False
    image["status"] = "ok" if label == image["expected"] else "mismatch"
    return image, True


def check_apparmor(domain, model, fix):
    """A running guest must be confined by its own libvirt profile in enforce mode."""
    live = domain.seclabel(model, live=True) or {}
    profile, mode = apparmor_state(domain.process_label or "unconfined")
    report = {"process_label": domain.process_label, "expected_process_label":
              "%s (enforce)" % live["label"] if live.get("label") else None,
              "images": [], "problems": []}
    reload_profile = None
    if live.get("type") == "none" or not live.get("label"):
        report["problems"].append("runs unconfined (no %s profile)" % model)
        return report, reload_profile
    if profile != live["label"]:
        report["problems"].append("QEMU process runs under %s, the domain says %s"
                                  % (profile or "no profile", live["label"]))
    elif mode != "enforce":
        if fix:
            reload_profile = "%s/%s" % (APPARMOR_DIR, live["label"])
        else:
            report["problems"].append("profile %s is in %s mode, not enforce" % (profile, mode))
    for disk in domain.images(model):
        listed = domain.apparmor_files is not None and '"%s"' % disk["path"] in domain.apparmor_files
        report["images"].append({"path": disk["path"], "label": live["label"] if listed else None,
                                 "expected": live["label"], "status": "ok" if listed else "mismatch"})
        if not listed:
            report["problems"].append("image %s is not in the files of profile %s"
                                      % (disk["path"], live["label"]))
    return report, reload_profile


def check_running(plans, domains, model):
    """Per-domain reports of all running guests; fixes are attached to the requested plans."""
    by_name = dict((guest.name, guest) for guest in plans)
    reports = {}
    for domain in domains:
        if not domain.active:
            continue
        guest = by_name.get(domain.name)
        if model == "selinux":
            fix = guest is not None and guest.after["type"] == "static" and guest.after["relabel"]
            reports[domain.name], fixes = check_selinux(domain, model, fix)
            if guest is not None:
                guest.image_fixes = fixes
        else:
            fix = guest is not None and guest.after["type"] != "none"
            reports[domain.name], reload_profile = check_apparmor(domain, model, fix)
            if guest is not None:
                guest.profile_reload = reload_profile
    return reports


# ---------------------------------------------------------------- applying

def apply(plans, define, host, run):
    """Redefine domains, relabel images, reload profiles; undo the first two on any failure."""
    undo = []
    try:
        for guest in plans:
            if guest.new_xml is not None:
                define(guest.new_xml)
                undo.append(lambda xml=guest.domain.config_xml: define(xml))
            for path, before, after in guest.image_fixes:
                host.set_file_label(path, after)
                undo.append(lambda path=path, before=before: host.set_file_label(path, before))
        for guest in plans:
            if guest.profile_reload:
                checked(run, ["apparmor_parser", "--replace", guest.profile_reload],
                        what="apparmor_parser (profile %s)" % guest.profile_reload)
    except Exception:
        for step in reversed(undo):
            step()
        raise


# ---------------------------------------------------------------- results

def restart_required(guest, model):
    """A running guest keeps the label it was started with until libvirt starts it again."""
    if not guest.domain.active:
        return False
    return comparable(guest.after) != comparable(guest.domain.seclabel(model, live=True))


def guest_result(guest, model):
    label = guest.after.get("label")
    return {
        "name": guest.name,
        "uuid": guest.domain.uuid,
        "type": guest.after["type"],
        "relabel": guest.after["relabel"] if guest.after["type"] != "none" else None,
        "label": label,
        "categories": category_text(context_categories(label)) if label and model == "selinux" else None,
        "allocated": guest.allocated,
        "changed": guest.changes_definition or bool(guest.image_fixes) or bool(guest.profile_reload),
        "restart_required": restart_required(guest, model),
        "before": seclabel_text(guest.before),
        "after": seclabel_text(guest.after),
        "image_fixes": [{"path": path, "before": before, "after": after}
                        for path, before, after in guest.image_fixes],
        "profile_enforced": guest.profile_reload,
    }


def domain_result(domain, model, planned, running_report):
    config = planned.get(domain.name, domain.seclabel(model))
    live = domain.seclabel(model, live=True) if domain.active else None
    label = (live or config or {}).get("label")
    problems = []
    if config is not None and config["type"] == "none":
        problems.append("defined with type none: its QEMU process runs unconfined")
    result = {
        "name": domain.name,
        "uuid": domain.uuid,
        "active": domain.active,
        "pid": domain.pid,
        "type": (config or {}).get("type"),
        "label": label,
        "imagelabel": (live or {}).get("imagelabel"),
        "categories": None,
        "process_label": None,
        "images": [],
        "problems": problems,
    }
    if model == "selinux" and label and (live or config)["type"] != "none":
        result["categories"] = category_text(context_categories(label))
    if running_report:
        result["process_label"] = running_report["process_label"]
        result["images"] = running_report["images"]
        problems.extend(running_report["problems"])
    return result


def diff(plans):
    changed = [guest for guest in plans if guest.changes_definition]
    return {
        "before": "".join("# %s\n%s\n" % (g.name, seclabel_text(g.before)) for g in changed),
        "after": "".join("# %s\n%s\n" % (g.name, seclabel_text(g.after)) for g in changed),
    }


# ---------------------------------------------------------------- one call, end to end

class Evaluation(object):
    def __init__(self, model, domains, plans, planned, reports):
        self.model = model
        self.domains = domains
        self.plans = plans
        self.planned = planned
        self.reports = reports


def evaluate(conn, params, host):
    """Read the host through an open ``_libvirt.Connection`` and plan; changes nothing."""
    domains = conn.domains(Domain)
    # a guest that does not exist is the request's fault: say so before anything about the host
    for request in params.get("guests") or []:
        find(domains, request["name"])
    models = host_security(conn.capabilities())
    model = choose_model(params.get("model") or "auto", models)
    for domain in domains:
        if domain.active:
            observe(domain, model, host)
    plans, planned = plan(model, params.get("guests") or [], domains,
                          params.get("reserved_categories") or [], dict(models).get(model),
                          params.get("allow_unconfined", False))
    return Evaluation(model, domains, plans, planned, check_running(plans, domains, model))


def summary(evaluation):
    """(changed, result dict, warnings) for the module to return."""
    model = evaluation.model
    guests = [guest_result(guest, model) for guest in evaluation.plans]
    domains = [domain_result(domain, model, evaluation.planned, evaluation.reports.get(domain.name))
               for domain in evaluation.domains]
    shared = collisions(evaluation.domains, model, evaluation.planned)
    warnings = overlaps(evaluation.domains, model, evaluation.planned)
    for item in shared:
        warnings.append("running domains %s share the categories %s until %s restarted"
                        % (" and ".join(item["domains"]), item["categories"],
                           "they are" if len(item["domains"]) > 2 else "one of them is"))
    for guest in guests:
        if guest["changed"] and guest["restart_required"]:
            warnings.append("guest %s keeps its current label until it is restarted" % guest["name"])
    problems = ["%s: %s" % (domain["name"], problem)
                for domain in domains for problem in domain["problems"]]
    result = {"model": model, "guests": guests, "domains": domains, "collisions": shared,
              "problems": problems}
    return any(guest["changed"] for guest in guests), result, warnings


def labels_report(result, host=None):
    """The labels report's JSON text, from summary()'s result dict."""
    report = {
        "host": host or platform.node(),
        "model": result["model"],
        "domains": result["domains"],
        "collisions": result["collisions"],
        "problems": result["problems"],
        "restart_required": [guest["name"] for guest in result["guests"] if guest["restart_required"]],
    }
    return json.dumps(report, indent=4, sort_keys=True) + "\n"


def write_report(path, text):
    """Write the report when its content differs (root only); True when it was written.

    The report is output, not a setting: writing it is never a change of the host's
    confinement, and leaving an equal file alone spares a write on every run.
    """
    if read_text(path, default="") == text:
        return False
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    atomic_write(path, text, mode=0o600)
    return True


def decide(conn, params, host, run):
    """The plan for the module's whole job: the requested labels, the labels report and its file."""
    evaluation = evaluate(conn, params, host)
    changed, result, warnings = summary(evaluation)
    result["report_written"] = False

    def apply_():
        apply(evaluation.plans, conn.define, host, run)
        if params["report_path"]:
            try:
                result["report_written"] = write_report(params["report_path"], labels_report(result))
            except (IOError, OSError) as exc:
                raise SvirtError("report_path %s: %s" % (params["report_path"], exc))
        return result
    return Plan(changed, result, diff(evaluation.plans), warnings, apply_)
