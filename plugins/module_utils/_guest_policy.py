# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest definition policy: what a tenant's domain XML may hold. Private to the collection.

Each rule reads a domain's XML and yields its violations. A violation of a *setting* (the
balloon's model, shared memory access, the CPU mode, a console's listen address, a disk's cache
mode, an interface's traffic filter) comes with the edit that fixes it; a forbidden *device*
(ivshmem, host USB or character devices, QEMU command-line pass-through, a guest on the
management network) does not: removing hardware from a tenant is a decision for its operator,
so it is reported with what to do instead.

``plan`` checks every guest's persistent definition and, when it runs, its live XML; fixes go
into the persistent definition only. A running guest keeps what it was started with, so one
whose live XML breaks a rule is reported as needing a restart and is never restarted here.
``apply`` defines the new definitions, reads each back (libvirt fills in defaults such as a
virtio balloon where none is named) and restores every definition already changed when one
fails. Pure Python over the collection's libvirt layer: no libvirt or Ansible import.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import (
    LibvirtError,
    edited,
    find,
    parse,
    redacted,
)
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
RULES = ("memballoon", "shared_memory", "ivshmem", "vhost_net", "cpu_mode", "cpu_mitigations",
         "qemu_commandline", "graphics_listen", "host_devices", "disk_cache", "nwfilter",
         "management_network")
HOST_DEVICES = ("usb", "serial", "parallel")
DEFAULTS = {
    "rules": list(RULES),
    "cpu_modes": ["host-passthrough", "host-model"],
    "cpu_features": ["spec-ctrl", "ssbd", "md-clear"],
    "vhost_net": True,
    "graphics_listen": ["127.0.0.1", "::1"],
    "allow_host_devices": [],
    "nwfilters": ["clean-traffic"],
    "management_networks": [],
    "exceptions": [],
    "guests": [],
}
FILTERED_INTERFACES = ("network", "bridge", "ethernet")


def append(parent, element):
    """Append element with the indentation of its siblings, so diffs read like libvirt's XML."""
    if len(parent):
        element.tail = parent[-1].tail
        parent[-1].tail = parent[-2].tail if len(parent) > 1 else parent.text
    parent.append(element)
    return element


def remove(parent, element):
    """Remove element and keep the layout: what followed it now follows the element before it."""
    index = list(parent).index(element)
    if index:
        parent[index - 1].tail = element.tail
    else:
        parent.text = element.tail
    parent.remove(element)


class GuestPolicyError(Exception):
    """Bad input, or a definition libvirt would not keep; the host is left as it was."""


class Violation(object):
    def __init__(self, rule, detail, fix=None):
        self.rule = rule
        self.detail = detail
        self.fix = fix

    def as_dict(self, status):
        return {"rule": self.rule, "detail": self.detail, "status": status}


def _network_name(name):
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.:@+-]{1,64}$", name):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def validate(policy, known_filters=None):
    """Refuse a policy that can never be met, naming the option and what is valid."""
    unknown = sorted(set(policy["rules"]) - set(RULES))
    if unknown:
        raise GuestPolicyError("rules: unknown rule %s; valid rules: %s" % (", ".join(unknown), ", ".join(RULES)))
    if "cpu_mode" in policy["rules"] and not policy["cpu_modes"]:
        raise GuestPolicyError("cpu_modes: empty; give host-passthrough and/or host-model")
    bad = [mode for mode in policy["cpu_modes"] if mode not in ("host-passthrough", "host-model", "maximum")]
    if bad:
        raise GuestPolicyError("cpu_modes: %s is not a mode that passes the host's mitigations through; "
                               "valid: host-passthrough, host-model, maximum" % ", ".join(bad))
    if "graphics_listen" in policy["rules"] and not policy["graphics_listen"]:
        raise GuestPolicyError("graphics_listen: empty; give the addresses consoles may listen on, "
                               "such as 127.0.0.1")
    if "nwfilter" in policy["rules"] and not policy["nwfilters"]:
        raise GuestPolicyError("nwfilters: empty; give the traffic filters guest interfaces may use, "
                               "such as clean-traffic")
    for name in policy["management_networks"]:
        if not _network_name(name):
            raise GuestPolicyError("management_networks: %r is not the name of a bridge, libvirt network or "
                                   "interface (such as br-mgmt or mgmt); guests are matched by the name their "
                                   "interface's source gives, not by address" % (name,))
    for index, entry in enumerate(policy["exceptions"]):
        where = "exceptions[%d]" % index
        if not (entry.get("reason") or "").strip():
            raise GuestPolicyError("%s (guest %s): reason is empty; say why the guest may break the rule"
                                   % (where, entry.get("guest")))
        wrong = sorted(set(entry.get("rules") or []) - set(RULES))
        if wrong or not entry.get("rules"):
            raise GuestPolicyError("%s (guest %s): rules %s; valid rules: %s"
                                   % (where, entry.get("guest"), ", ".join(wrong) or "is empty", ", ".join(RULES)))


# ---------------------------------------------------------------- the rules

def check_memballoon(root, policy, context):
    devices = root.find("devices")
    balloon = devices.find("memballoon") if devices is not None else None
    if balloon is None:
        def add(new_root):
            device_list = new_root.find("devices")
            if device_list is None:
                device_list = append(new_root, new_root.makeelement("devices", {}))
            append(device_list, new_root.makeelement("memballoon", {"model": "none"}))
        yield Violation("memballoon", "no <memballoon>: libvirt adds a virtio balloon, through which the "
                                      "guest learns and steers host memory", add)
    elif balloon.get("model") != "none":
        def disable(new_root):
            element = new_root.find("devices/memballoon")
            tail = element.tail
            element.clear()
            element.set("model", "none")
            element.tail = tail
        yield Violation("memballoon", "memballoon model %s: the guest learns and steers host memory"
                        % balloon.get("model"), disable)


def check_shared_memory(root, policy, context):
    virtiofs = root.find("devices/filesystem/driver[@type='virtiofs']") is not None
    found = []
    if root.find("memoryBacking/access[@mode='shared']") is not None:
        found.append(("<memoryBacking><access mode='shared'/>", "memoryBacking/access[@mode='shared']", None))
    for index, cell in enumerate(root.findall("cpu/numa/cell")):
        if cell.get("memAccess") == "shared":
            found.append(("NUMA cell %s memAccess=shared" % cell.get("id", index), "cpu/numa/cell", "memAccess"))
    for memory in root.findall("devices/memory"):
        if memory.get("access") == "shared":
            found.append(("memory device %s access=shared" % memory.get("model"), "devices/memory", "access"))
    for text, path, attribute in found:
        if virtiofs:
            yield Violation("shared_memory", "%s: memory the host and other processes can map; this guest "
                                             "has a virtiofs share, which needs it - add an exception" % text)
            continue
        yield Violation("shared_memory", "%s: memory the host and other processes can map" % text,
                        _unshare(path, attribute))


def _unshare(path, attribute):
    def fix(new_root):
        if attribute is None:
            backing = new_root.find("memoryBacking")
            for access in backing.findall("access[@mode='shared']"):
                remove(backing, access)
            return
        for element in new_root.findall(path):
            if element.get(attribute) == "shared":
                del element.attrib[attribute]
    return fix


def check_ivshmem(root, policy, context):
    for shmem in root.findall("devices/shmem"):
        yield Violation("ivshmem", "ivshmem device %s: memory shared with other guests or the host; remove the "
                                   "device or add an exception" % shmem.get("name"))


def check_vhost_net(root, policy, context):
    if policy["vhost_net"]:
        return
    for iface in root.findall("devices/interface"):
        model = iface.find("model")
        driver = iface.find("driver")
        if model is None or model.get("type") != "virtio" or (driver is not None and driver.get("name") == "qemu"):
            continue
        yield Violation("vhost_net", "interface %s uses the in-kernel vhost-net backend, which vhost_net=false "
                                     "forbids" % _iface_name(iface), _userspace_backend(_mac(iface)))


def _mac(iface):
    mac = iface.find("mac")
    return mac.get("address") if mac is not None else None


def _iface_name(iface):
    return _mac(iface) or (iface.find("target").get("dev") if iface.find("target") is not None else "?")


def _interface(root, mac):
    for iface in root.findall("devices/interface"):
        if _mac(iface) == mac:
            return iface
    raise GuestPolicyError("interface %s vanished from the definition while it was edited" % mac)


def _userspace_backend(mac):
    def fix(new_root):
        iface = _interface(new_root, mac)
        driver = iface.find("driver")
        if driver is None:
            driver = append(iface, iface.makeelement("driver", {}))
        driver.set("name", "qemu")
    return fix


def check_cpu_mode(root, policy, context):
    if root.get("type") != "kvm":
        return  # TCG emulates its CPU: there is no host CPU to pass through
    cpu = root.find("cpu")
    mode = cpu.get("mode", "custom") if cpu is not None else None
    if mode in policy["cpu_modes"]:
        return
    wanted = policy["cpu_modes"][0]

    def fix(new_root):
        element = new_root.find("cpu")
        if element is None:
            element = append(new_root, new_root.makeelement("cpu", {}))
        for child in element.findall("model") + element.findall("vendor"):
            remove(element, child)
        for attribute in ("match", "check"):
            element.attrib.pop(attribute, None)
        element.set("mode", wanted)
    yield Violation("cpu_mode", "CPU mode %s: the guest does not see the host's mitigation features (%s)"
                    % (mode or "unset (a generic CPU model)", ", ".join(policy["cpu_features"])), fix)


def check_cpu_mitigations(root, policy, context):
    for feature in root.findall("cpu/feature"):
        name = feature.get("name")
        if name in policy["cpu_features"] and feature.get("policy") in ("disable", "forbid"):
            yield Violation("cpu_mitigations", "CPU feature %s is turned off (policy %s): the guest cannot "
                                               "use the mitigation" % (name, feature.get("policy")),
                            _drop_feature(name))


def _drop_feature(name):
    def fix(new_root):
        cpu = new_root.find("cpu")
        for feature in cpu.findall("feature"):
            if feature.get("name") == name and feature.get("policy") in ("disable", "forbid"):
                remove(cpu, feature)
    return fix


def check_qemu_commandline(root, policy, context):
    if root.find(QEMU_NS + "commandline") is not None:
        args = [arg.get("value") for arg in root.findall(QEMU_NS + "commandline/" + QEMU_NS + "arg")]
        yield Violation("qemu_commandline", "<qemu:commandline> passes arguments to QEMU that libvirt neither "
                                            "checks nor confines (%s); move them into domain XML or add an "
                                            "exception" % " ".join(arg or "" for arg in args))


def check_graphics_listen(root, policy, context):
    allowed = policy["graphics_listen"]
    for index, graphics in enumerate(root.findall("devices/graphics")):
        if graphics.get("type") not in ("vnc", "spice"):
            continue
        heard = []
        if graphics.get("listen") and graphics.get("listen") not in allowed:
            heard.append(graphics.get("listen"))
        for listen in graphics.findall("listen"):
            if listen.get("type") == "network":
                heard.append("network %s" % listen.get("network"))
            elif listen.get("type") == "address" and listen.get("address") not in (None,) + tuple(allowed):
                heard.append(listen.get("address"))
        if heard:
            yield Violation("graphics_listen", "%s console listens on %s, not on %s"
                            % (graphics.get("type"), ", ".join(heard), " or ".join(allowed)),
                            _listen_locally(index, allowed[0]))


def _listen_locally(index, address):
    def fix(new_root):
        graphics = new_root.findall("devices/graphics")[index]
        if graphics.get("listen") is not None:
            graphics.set("listen", address)
        for listen in graphics.findall("listen"):
            if listen.get("type") in ("network", "address"):
                listen.attrib.pop("network", None)
                listen.set("type", "address")
                listen.set("address", address)
    return fix


def check_host_devices(root, policy, context):
    allowed = policy["allow_host_devices"]
    if "usb" not in allowed:
        for hostdev in root.findall("devices/hostdev[@type='usb']"):
            vendor = hostdev.find("source/vendor")
            product = hostdev.find("source/product")
            what = ("%s:%s" % (vendor.get("id"), product.get("id"))) if vendor is not None and product is not None \
                else "by address"
            yield Violation("host_devices", "host USB device %s passed through; remove it, allow usb in "
                                            "allow_host_devices or add an exception" % what)
    for kind in ("serial", "parallel"):
        if kind in allowed:
            continue
        for device in root.findall("devices/%s[@type='dev']" % kind):
            source = device.find("source")
            yield Violation("host_devices", "host %s device %s passed through; remove it, allow %s in "
                                            "allow_host_devices or add an exception"
                            % (kind, source.get("path") if source is not None else "?", kind))


def check_disk_cache(root, policy, context):
    for index, disk in enumerate(root.findall("devices/disk")):
        driver = disk.find("driver")
        if driver is not None and driver.get("cache") == "unsafe":
            target = disk.find("target")
            yield Violation("disk_cache", "disk %s has cache=unsafe: QEMU ignores the guest's flushes and a host "
                                          "crash loses data the guest was told is written"
                            % (target.get("dev") if target is not None else index), _safe_cache(index))


def _safe_cache(index):
    def fix(new_root):
        # the hypervisor's default honours flushes and works on every filesystem (cache=none needs O_DIRECT)
        del new_root.findall("devices/disk")[index].find("driver").attrib["cache"]
    return fix


def check_nwfilter(root, policy, context):
    for iface in root.findall("devices/interface"):
        if iface.get("type") not in FILTERED_INTERFACES:
            continue
        ref = iface.find("filterref")
        if ref is not None and ref.get("filter") in policy["nwfilters"]:
            continue
        if ref is not None:
            yield Violation("nwfilter", "interface %s uses traffic filter %s, not %s; add it to nwfilters when it "
                                        "includes clean-traffic, or add an exception"
                            % (_iface_name(iface), ref.get("filter"), " or ".join(policy["nwfilters"])))
            continue
        wanted = policy["nwfilters"][0]
        detail = "interface %s has no traffic filter: the guest can spoof MAC, IP and ARP" % _iface_name(iface)
        if wanted not in context["nwfilters"]:
            yield Violation("nwfilter", "%s, and libvirt on this host has no filter %s to add (virsh "
                                        "nwfilter-list)" % (detail, wanted))
        else:
            yield Violation("nwfilter", detail, _add_filter(_mac(iface), wanted))


def _add_filter(mac, name):
    def fix(new_root):
        iface = _interface(new_root, mac)
        append(iface, iface.makeelement("filterref", {"filter": name}))
    return fix


def check_management_network(root, policy, context):
    for iface in root.findall("devices/interface"):
        source = iface.find("source")
        if source is None:
            continue
        network = source.get("bridge") or source.get("network") or source.get("dev")
        if network in policy["management_networks"]:
            yield Violation("management_network", "interface %s is on %s, the host's management network; move it "
                                                  "to a guest bridge or network" % (_iface_name(iface), network))


CHECKS = dict((rule, globals()["check_" + rule]) for rule in RULES)


def violations(xml_text, policy, context):
    """Every violation of the rules in force, in rule order."""
    root = parse(xml_text)
    found = []
    for rule in RULES:
        if rule in policy["rules"]:
            found.extend(CHECKS[rule](root, policy, context))
    return found


def fixed(xml_text, found):
    """The definition with every fixable violation of ``found`` edited away; None when none is."""
    fixes = [violation.fix for violation in found if violation.fix]
    if not fixes:
        return None

    def change(root):
        for fix in fixes:
            fix(root)
    return edited(xml_text, change)


# ---------------------------------------------------------------- plan

class GuestPlan(object):
    def __init__(self, domain, exempt):
        self.domain = domain
        self.exempt = exempt
        self.fixed = []
        self.open = []
        self.live = []
        self.new_xml = None

    @property
    def restart_required(self):
        return bool(self.live) or (self.domain.active and self.new_xml is not None)

    def result(self):
        statuses = [v.as_dict("fixed") for v in self.fixed] + [v.as_dict("open") for v in self.open]
        return {
            "name": self.domain.name,
            "active": self.domain.active,
            "persistent": self.domain.persistent,
            "changed": self.new_xml is not None,
            "violations": statuses,
            "restart_required": self.restart_required,
            "running_violations": [v.as_dict("running") for v in self.live],
            "exceptions": [{"rule": rule, "reason": reason} for rule, reason in sorted(self.exempt.items())],
        }


def exemptions(policy, domains):
    """{guest name: {rule: reason}}; warnings for exceptions naming no guest on the host."""
    exempt, warnings = {}, []
    for index, entry in enumerate(policy["exceptions"]):
        try:
            domain = find(domains, entry["guest"], option="exceptions[%d].guest" % index)
        except LibvirtError as exc:
            warnings.append("%s: the exception is not used" % exc)
            continue
        for rule in entry["rules"]:
            exempt.setdefault(domain.name, {})[rule] = entry["reason"]
    return exempt, warnings


def selected(domains, names):
    """The domains ``guests`` names (all when it names none), each found by name or UUID."""
    if not names:
        return domains
    chosen = [find(domains, name, option="guests") for name in names]
    return sorted(dict((domain.name, domain) for domain in chosen).values(), key=lambda domain: domain.name)


def plan(domains, policy, context):
    """A GuestPlan per domain and the warnings; reads only."""
    exempt, warnings = exemptions(policy, domains)
    domains = selected(domains, policy["guests"])
    plans = []
    for domain in domains:
        guest = GuestPlan(domain, exempt.get(domain.name, {}))
        in_force = [v for v in violations(domain.config_xml, policy, context) if v.rule not in guest.exempt]
        fixable = [v for v in in_force if v.fix]
        if domain.persistent and fixable:
            guest.new_xml = fixed(domain.config_xml, fixable)
            remaining = [v for v in violations(guest.new_xml, policy, context)
                         if v.rule not in guest.exempt and v.fix]
            if remaining:
                raise GuestPolicyError("guest %s: the fix for %s did not take (%s)" % (
                    domain.name, remaining[0].rule, remaining[0].detail))
            guest.fixed = fixable
            guest.open = [v for v in in_force if not v.fix]
        else:
            guest.open = in_force
        if domain.active:
            guest.live = [v for v in violations(domain.live_xml, policy, context)
                          if v.rule not in guest.exempt and not _expanded_host_model(v, domain)]
        plans.append(guest)
    return plans, warnings


def _expanded_host_model(violation, domain):
    """A running host-model guest shows the model libvirt expanded it to as mode custom."""
    if violation.rule != "cpu_mode":
        return False
    cpu = parse(domain.config_xml).find("cpu")
    return cpu is not None and cpu.get("mode") == "host-model"


# ---------------------------------------------------------------- apply

def apply(plans, conn, policy, context):
    """Define every new definition and read it back; restore all of them if one fails."""
    done = []
    try:
        for guest in plans:
            if guest.new_xml is None:
                continue
            conn.define(guest.new_xml)
            done.append(guest)
            kept = conn.domain(guest.domain.uuid).config_xml
            back = [v for v in violations(kept, policy, context) if v.rule not in guest.exempt and v.fix]
            if back:
                raise GuestPolicyError("guest %s: libvirt did not keep the fix for %s (%s); its definition is "
                                       "restored" % (guest.domain.name, back[0].rule, back[0].detail))
    except Exception:
        for guest in reversed(done):
            conn.define(guest.domain.config_xml)
        raise


# ---------------------------------------------------------------- results

def summary(plans):
    """(changed, result, diff): one diff per changed guest, headed by its name."""
    problems = ["%s: %s: %s" % (guest.domain.name, v.rule, v.detail) for guest in plans for v in guest.open]
    restart = [guest.domain.name for guest in plans if guest.restart_required]
    result = {
        "guests": [guest.result() for guest in plans],
        "problems": problems,
        "restart_required": restart,
    }
    changed_plans = [guest for guest in plans if guest.new_xml is not None]
    # the after header names the rules the edit fixes: an audit's evidence then says why it differs
    diff = [{"before_header": "%s (definition)" % g.domain.name,
             "after_header": "%s (definition, fixed: %s)" % (g.domain.name, ", ".join(v.rule for v in g.fixed)),
             "before": redacted(g.domain.config_xml), "after": redacted(g.new_xml)} for g in changed_plans]
    return bool(changed_plans), result, diff


def decide(conn, policy):
    """The module's whole job as a Plan, for a policy validate() accepted: read every guest and
    plan; applying defines the new definitions."""
    context = {"nwfilters": conn.nwfilters()}
    plans, warnings = plan(conn.domains(), policy, context)
    changed, result, diff = summary(plans)
    return Plan(changed, result, diff, warnings, apply=lambda: apply(plans, conn, policy, context))
