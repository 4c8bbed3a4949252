# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Give PCI devices to vfio-pci without taking the host down. Private to the collection.

Everything is read and written below a root path (``Host(root)``): sysfs, /proc, /dev and the
files under /etc and /var/lib. Unit tests point it at fake trees shaped like the lab's real
one; nothing here imports Ansible, and commands (modprobe, udevadm) go through ``run``.

Safety rules, all checked before anything is written:
- the IOMMU must be on (IOMMU groups exist and the device has one);
- every other member of the device's IOMMU group must already belong to a driver that leaves
  DMA to the group's owner (vfio-pci, pci-stub, pcieport), be a bridge no host driver holds,
  or be bound in the same call;
- devices the running host needs (mounted filesystems and swap, the default route, the primary
  display and the consoles) are refused unless forced;
- bridges (PCI class 06) are refused: they belong to the platform.

Persistence is a udev rule per device (driverctl's approach, without driverctl): at the device's
``add`` event it sets ``driver_override=vfio-pci``, loads vfio-pci, takes the device from a host
driver that got it first (initramfs, built-in) and probes it. The driver a device had before
is remembered in a state file, so ``unbound`` gives it back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import NotRestored, change_to, write_all
from ansible_collections.kvmsec.hardening.plugins.module_utils._kvm_host_info import kernel_cmdline
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

VFIO = "vfio-pci"
# drivers that declare driver_managed_dma: the kernel lets vfio own a group they sit in
DMA_SAFE_DRIVERS = ("vfio-pci", "pci-stub", "pcieport")
ADDRESS_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")
SHORT_ADDRESS_RE = re.compile(r"^[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")
ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")

PCI_DEVICES = "sys/bus/pci/devices"
PCI_DRIVERS = "sys/bus/pci/drivers"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
RULES_FILE = "etc/udev/rules.d/61-kvmsec-vfio-pci.rules"
STATE_FILE = "var/lib/kvmsec/vfio_bind.json"

RULES_HEADER = """\
# Managed by kvmsec.hardening.vfio_bind: these PCI devices go to vfio-pci at boot, before a
# host driver can use them. Give a device back with state=unbound instead of editing this file.
ACTION!="add", GOTO="kvmsec_vfio_end"
SUBSYSTEM!="pci", GOTO="kvmsec_vfio_end"
"""
RULES_FOOTER = """\
GOTO="kvmsec_vfio_end"
LABEL="kvmsec_vfio_bind"
ATTR{driver_override}="vfio-pci", IMPORT{builtin}="kmod load vfio-pci"
DRIVER=="vfio-pci", GOTO="kvmsec_vfio_end"
DRIVER=="?*", ATTR{driver/unbind}="%k"
ATTR{[subsystem/pci]drivers_probe}="%k"
LABEL="kvmsec_vfio_end"
"""


class VfioError(Exception):
    """Bad input or an unsafe request; the message says what is wrong and what would work."""


class Host(object):
    """The machine below ``root``. ``write`` is the kernel's side: sysfs attribute stores."""

    def __init__(self, root="/"):
        self.root = root

    def path(self, relative):
        return os.path.join(self.root, relative)

    def read(self, relative, default=None):
        try:
            with open(self.path(relative)) as handle:
                return handle.read()
        except (IOError, OSError):
            return default

    def exists(self, relative):
        return os.path.exists(self.path(relative))

    def listdir(self, relative):
        try:
            return sorted(os.listdir(self.path(relative)))
        except OSError:
            return []

    def link_name(self, relative):
        """Last component of a symlink's target (a driver or group name); None when absent."""
        try:
            return os.path.basename(os.readlink(self.path(relative)))
        except OSError:
            return None

    def resolve(self, relative):
        """Where a sysfs path really is, relative to root ('' when it does not exist)."""
        full = os.path.realpath(self.path(relative))
        if not os.path.exists(full):
            return ""
        return os.path.relpath(full, os.path.realpath(self.root))

    def write(self, relative, value):
        """Store into a sysfs attribute: no create, no truncate, one write as the kernel wants."""
        fd = os.open(self.path(relative), os.O_WRONLY)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)

    def label(self, relative):
        try:
            raw = os.getxattr(self.path(relative), "security.selinux")
        except (AttributeError, OSError):
            return None
        return raw.rstrip(b"\0").decode("ascii", "replace")


class Device(object):
    """One PCI function as sysfs shows it now."""

    def __init__(self, host, address):
        base = PCI_DEVICES + "/" + address
        self.address = address
        self.vendor = _hex4(host.read(base + "/vendor", ""))
        self.device = _hex4(host.read(base + "/device", ""))
        self.pci_class = host.read(base + "/class", "").strip()
        self.driver = host.link_name(base + "/driver")
        override = (host.read(base + "/driver_override", "") or "").strip()
        self.override = None if override in ("", "(null)") else override
        group = host.link_name(base + "/iommu_group")
        self.group = int(group) if group is not None else None
        self.bridge = _is_bridge(host, base, self.pci_class)
        self.boot_vga = (host.read(base + "/boot_vga", "") or "").strip() == "1"
        self.modalias = (host.read(base + "/modalias", "") or "").strip()

    @property
    def pci_id(self):
        return "%s:%s" % (self.vendor, self.device)

    def describe(self):
        return "%s (%s, driver %s)" % (self.address, self.pci_id, self.driver or "none")


def _hex4(text):
    return (text or "").strip().lower().replace("0x", "").zfill(4)


def _is_bridge(host, base, pci_class):
    """PCI class 06 (host, ISA, PCI bridges...) or a bridge header type (1 or 2)."""
    if pci_class.startswith("0x06"):
        return True
    try:
        with open(host.path(base + "/config"), "rb") as handle:
            header = bytearray(handle.read(16))
    except (IOError, OSError):
        return False
    return len(header) == 16 and header[14] & 0x7F != 0


# ---------------------------------------------------------------- selecting devices

def parse_selector(text):
    """('address', 'dddd:bb:dd.f') or ('id', 'vvvv:dddd'); VfioError says what is valid."""
    value = str(text).strip().lower()
    if ADDRESS_RE.match(value):
        return "address", value
    if ID_RE.match(value):
        return "id", value
    hint = ""
    if SHORT_ADDRESS_RE.match(value):
        hint = " (add the PCI domain: 0000:%s)" % value
    raise VfioError(
        "%r is neither a PCI address DDDD:BB:DD.F, for example 0000:03:00.0 (lspci -D lists "
        "them), nor a vendor:device id VVVV:DDDD, for example 1234:11e8 (lspci -nn)%s"
        % (text, hint))


def select(host, selectors):
    """The addresses the selectors name, each once, in order; every selector must match."""
    if not selectors:
        raise VfioError("devices is empty: name at least one PCI address or vendor:device id")
    present = host.listdir(PCI_DEVICES)
    chosen = []
    for kind, value in [parse_selector(s) for s in selectors]:
        if kind == "address":
            if value not in present:
                raise VfioError("no PCI device %s on this host; present: %s"
                                % (value, ", ".join(present) or "none"))
            matches = [value]
        else:
            matches = [a for a in present if Device(host, a).pci_id == value]
            if not matches:
                raise VfioError("no PCI device with vendor:device id %s on this host" % value)
        chosen.extend(a for a in matches if a not in chosen)
    return chosen


# ---------------------------------------------------------------- what the host needs

def pci_addresses_in(path):
    return [part for part in path.split("/") if ADDRESS_RE.match(part)]


def _block_chain(host, relative, seen=None):
    """PCI functions behind a block device, through dm/md/LVM members ('slaves')."""
    seen = set() if seen is None else seen
    real = host.resolve(relative)
    if not real or real in seen:
        return []
    seen.add(real)
    found = pci_addresses_in(real)
    # a partition's holders and members are listed on the whole disk as well as on itself
    for base in (real, os.path.dirname(real)):
        for member in host.listdir(base + "/slaves"):
            found += _block_chain(host, base + "/slaves/" + member, seen)
    return found


def _mounted_block_devices(host):
    """(what it holds, sysfs path of its block device) for block filesystems and swap."""
    found = []
    for line in (host.read("proc/self/mountinfo", "") or "").splitlines():
        left, dummy, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mountpoint = fields[4].replace("\\040", " ")
        if not fields[2].startswith("0:"):
            found.append(("the mounted filesystem %s" % mountpoint, "sys/dev/block/" + fields[2]))
        elif tail[1].startswith("/dev/"):
            found.append(("the mounted filesystem %s" % mountpoint,
                          "sys/class/block/" + _dev_name(host, tail[1])))
    for line in (host.read("proc/swaps", "") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "partition":
            found.append(("swap on %s" % fields[0], "sys/class/block/" + _dev_name(host, fields[0])))
    return found


def _dev_name(host, dev_path):
    """Kernel name of a /dev path, following /dev/mapper and /dev/disk links."""
    real = host.resolve(dev_path.lstrip("/"))
    return os.path.basename(real or dev_path)


def _routes_traffic(flags_hex):
    """RTF_UP set and RTF_REJECT clear: an "unreachable"/"prohibit" default is no route out."""
    flags = int(flags_hex, 16)
    return bool(flags & 0x1) and not flags & 0x200


def default_route_interfaces(host):
    names = set()
    for line in (host.read("proc/net/route", "") or "").splitlines()[1:]:
        fields = line.split()
        if (len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000"
                and _routes_traffic(fields[3])):
            names.add(fields[0])
    for line in (host.read("proc/net/ipv6_route", "") or "").splitlines():
        fields = line.split()
        if (len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00"
                and _routes_traffic(fields[8])):
            names.add(fields[9])
    return sorted(names)


def _netdev_chain(host, name, seen=None):
    """PCI functions under a network interface, through bridges, bonds and VLANs (lower_*)."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    base = "sys/class/net/" + name
    found = pci_addresses_in(host.resolve(base))
    for entry in host.listdir(base):
        if entry.startswith("lower_"):
            found += _netdev_chain(host, entry[len("lower_"):], seen)
    return found


def _console_chain(host):
    found = []
    for fb in host.listdir("sys/class/graphics"):
        for address in pci_addresses_in(host.resolve("sys/class/graphics/%s/device" % fb)):
            found.append((address, "drives the console framebuffer %s" % fb))
    for tty in (host.read("sys/class/tty/console/active", "") or "").split():
        for address in pci_addresses_in(host.resolve("sys/class/tty/%s/device" % tty)):
            found.append((address, "carries the console %s" % tty))
    for address in host.listdir(PCI_DEVICES):
        if (host.read(PCI_DEVICES + "/%s/boot_vga" % address, "") or "").strip() == "1":
            found.append((address, "is the primary display (boot_vga)"))
    return found


def host_needs(host):
    """{address: [reasons]} for the PCI functions the running host depends on."""
    needs = {}

    def add(address, reason):
        reasons = needs.setdefault(address, [])
        if reason not in reasons:
            reasons.append(reason)

    for what, block in _mounted_block_devices(host):
        for address in _block_chain(host, block):
            add(address, "holds %s" % what)
    for name in default_route_interfaces(host):
        for address in _netdev_chain(host, name):
            add(address, "carries the default route (%s)" % name)
    for address, reason in _console_chain(host):
        add(address, reason)
    return needs


# ---------------------------------------------------------------- IOMMU

def iommu_groups(host):
    return host.listdir(IOMMU_GROUPS)


def iommu_advice(host):
    """What to add to the kernel command line (and firmware) to get IOMMU groups."""
    tables = set(host.listdir("sys/firmware/acpi/tables"))
    cmdline = kernel_cmdline(host.root)
    present = "the running kernel has: %s" % (" ".join(cmdline) or "(empty command line)")
    if "DMAR" in tables:
        advice = "the firmware offers Intel VT-d (ACPI DMAR table): add intel_iommu=on"
    elif "IVRS" in tables:
        advice = ("the firmware offers AMD-Vi (ACPI IVRS table), which Linux enables by "
                  "default: remove amd_iommu=off or iommu=off")
    else:
        advice = ("the firmware offers no IOMMU (no ACPI DMAR or IVRS table): enable VT-d or "
                  "AMD-Vi/IOMMU in the firmware setup, then add intel_iommu=on on Intel CPUs")
    off = [arg for arg in cmdline if arg in ("intel_iommu=off", "amd_iommu=off", "iommu=off")]
    if off:
        advice += "; remove %s" % " ".join(off)
    return "%s to the kernel command line (the iommu_vfio role does it) and reboot; %s" % (
        advice, present)


def check_iommu(host, devices):
    if not iommu_groups(host):
        raise VfioError("the IOMMU is off (%s is empty), so no device can be isolated: %s"
                        % ("/" + IOMMU_GROUPS, iommu_advice(host)))
    for device in devices:
        if device.group is None:
            raise VfioError("%s has no IOMMU group: the IOMMU does not cover it; %s"
                            % (device.address, iommu_advice(host)))


def group_members(host, group):
    return host.listdir("%s/%d/devices" % (IOMMU_GROUPS, group))


def member_is_safe(member):
    """A group member that cannot break isolation: its driver leaves DMA to the group's owner,
    or it is a bridge no host driver holds (a bridge bound to, say, lpc_ich is a blocker, as the
    kernel sees it). A driverless endpoint is not safe: a host driver could claim it later."""
    if member.driver in DMA_SAFE_DRIVERS:
        return True
    return member.bridge and member.driver is None


def check_viable(host, device, bound_together):
    """Fail unless every other member of the group is bound together with it or is safe."""
    blockers, members = [], []
    for address in group_members(host, device.group):
        member = Device(host, address)
        members.append(member)
        if address == device.address or address in bound_together:
            continue
        if not member_is_safe(member):
            blockers.append(member)
    if blockers:
        raise VfioError(
            "IOMMU group %d is not viable for %s: %s stay%s with the host, and a guest given "
            "one device of a group can reach the whole group. The group holds %s. Bind every "
            "non-bridge member together (list them all in devices), or move the device to a slot "
            "with its own group."
            % (device.group, device.address, ", ".join(m.describe() for m in blockers),
               "s" if len(blockers) == 1 else "", ", ".join(m.describe() for m in members)))


def check_bindable(host, devices, force, needs):
    """Every refusal for a bound request, before anything is written; warnings for forced ones."""
    warnings = []
    check_iommu(host, devices)
    addresses = [d.address for d in devices]
    for device in devices:
        if device.bridge:
            raise VfioError("%s is a bridge (class %s): bridges belong to the platform and "
                            "vfio-pci does not take PCI bridges; pass the devices behind it"
                            % (device.address, device.pci_class))
        # a device already on vfio-pci is no longer the host's: nothing is taken away
        reasons = needs.get(device.address) if device.driver != VFIO else None
        if reasons and not force:
            raise VfioError(
                "refusing %s: the host needs it - it %s. Binding it to vfio-pci takes that away "
                "from the host; set force=true only if you really mean it"
                % (device.describe(), "; it ".join(reasons)))
        if reasons:
            warnings.append("forced: %s is given to vfio-pci although it %s"
                            % (device.address, "; it ".join(reasons)))
        if device.driver != VFIO:
            check_viable(host, device, addresses)
    return warnings


# ---------------------------------------------------------------- state and rules files

def read_state(host):
    text = host.read(STATE_FILE)
    if not text:
        return {}
    try:
        devices = json.loads(text).get("devices", {})
    except (ValueError, AttributeError):
        raise VfioError("/%s is not the JSON this module writes; move it away and run again"
                        % STATE_FILE)
    return dict((a, dict(e)) for a, e in devices.items() if ADDRESS_RE.match(a))


def render_state(entries):
    if not entries:
        return None
    return json.dumps({"devices": entries}, indent=2, sort_keys=True) + "\n"


def render_rules(entries):
    persistent = sorted(a for a, entry in entries.items() if entry.get("persistent"))
    if not persistent:
        return None
    lines = ['KERNEL=="%s", GOTO="kvmsec_vfio_bind"\n' % a for a in persistent]
    return RULES_HEADER + "".join(lines) + RULES_FOOTER


# ---------------------------------------------------------------- plan

class Change(object):
    """What one requested device is and will be."""

    def __init__(self, device, entry, state, persistent):
        self.device = device
        self.state = state
        remembered = (entry or {}).get("previous_driver")
        if state == "bound":
            # already on vfio-pci: keep what was remembered; else the driver it leaves now
            self.previous_driver = remembered if device.driver == VFIO else device.driver
            self.after_driver, self.after_override = VFIO, VFIO
            self.entry = {"previous_driver": self.previous_driver, "persistent": persistent}
            self.kernel_chooses = False
        else:
            self.previous_driver = remembered
            leaving = device.driver == VFIO
            self.after_driver = self.previous_driver if leaving else device.driver
            # nothing remembered: the kernel's default probe chooses, which a plan cannot know
            self.kernel_chooses = leaving and not self.previous_driver
            self.after_override = None if device.override == VFIO else device.override
            self.entry = None
        self.before_persistent = bool(entry and entry.get("persistent"))
        self.after_persistent = bool(self.entry and self.entry["persistent"])

    @property
    def sysfs_changes(self):
        return (self.device.driver != self.after_driver
                or self.device.override != self.after_override)


class Needed(object):
    def __init__(self, host, state, changes, entries, warnings, needs_vfio_module):
        self.state = state
        self.changes = changes
        self.warnings = warnings
        self.load_vfio = needs_vfio_module
        self.files = [change for change in (
            change_to(host.path(relative), render(entries), shown="/" + relative)
            for relative, render in ((RULES_FILE, render_rules), (STATE_FILE, render_state)))
            if change is not None]

    @property
    def changed(self):
        return bool(self.files) or any(c.sysfs_changes for c in self.changes)

    @property
    def rules_change(self):
        """The udev rules' file change; None when the rules stay as they are."""
        return next((change for change in self.files if change.shown == "/" + RULES_FILE), None)


def plan(host, selectors, state="bound", persistent=True, force=False):
    """Check everything and work out the changes; reads only."""
    addresses = select(host, selectors)
    devices = [Device(host, a) for a in addresses]
    entries = read_state(host)
    warnings = []
    if state == "bound":
        warnings = check_bindable(host, devices, force, host_needs(host))
    changes = [Change(d, entries.get(d.address), state, persistent) for d in devices]
    for change in changes:
        if change.entry is None:
            entries.pop(change.device.address, None)
        else:
            entries[change.device.address] = change.entry
    needs_module = (state == "bound" and not host.exists(PCI_DRIVERS + "/" + VFIO)
                    and any(c.sysfs_changes for c in changes))
    return Needed(host, state, changes, entries, warnings, needs_module)


# ---------------------------------------------------------------- apply

class Tools(object):
    """Paths of the programs the core may run; None where the host lacks one."""

    def __init__(self, modprobe=None, udevadm=None):
        self.modprobe = modprobe
        self.udevadm = udevadm


def _store(host, relative, value, what):
    try:
        host.write(relative, value)
    except (IOError, OSError) as exc:
        raise VfioError("%s: writing %r to /%s failed: %s"
                        % (what, value.strip(), relative, os.strerror(exc.errno or errno.EIO)))


def _current_driver(host, address):
    return host.link_name(PCI_DEVICES + "/%s/driver" % address)


def _bind(host, change):
    address = change.device.address
    base = PCI_DEVICES + "/" + address
    if change.device.override != VFIO:
        _store(host, base + "/driver_override", VFIO, address)
    driver = _current_driver(host, address)
    if driver not in (None, VFIO):
        _store(host, base + "/driver/unbind", address, address)
    if driver != VFIO:
        _store(host, "sys/bus/pci/drivers_probe", address, address)
    driver = _current_driver(host, address)
    if driver != VFIO:
        raise VfioError("%s did not bind to vfio-pci (driver now: %s); the kernel log (dmesg) "
                        "says why" % (address, driver or "none"))


def _release(host, change, tools, run):
    address = change.device.address
    base = PCI_DEVICES + "/" + address
    if change.device.override == VFIO:
        _store(host, base + "/driver_override", "\n", address)
    if _current_driver(host, address) == VFIO:
        _store(host, PCI_DRIVERS + "/%s/unbind" % VFIO, address, address)
    _give_back(host, change, tools, run)
    driver = _current_driver(host, address)
    if driver == VFIO:
        raise VfioError("%s went back to vfio-pci: something else assigns it (vfio-pci ids= in "
                        "modprobe.d, or a rule outside this module)" % address)


def _give_back(host, change, tools, run):
    """To the remembered driver, else to whatever driver the kernel picks (default probe)."""
    address = change.device.address
    previous = change.previous_driver
    if previous and host.exists(PCI_DRIVERS + "/" + previous):
        try:
            host.write(PCI_DRIVERS + "/%s/bind" % previous, address)
            return
        except (IOError, OSError):
            pass  # the default probe below still finds the best driver
    if tools.modprobe and change.device.modalias:
        run([tools.modprobe, "-q", "-b", change.device.modalias])
    if _current_driver(host, address) is None:
        _store(host, "sys/bus/pci/drivers_probe", address, address)


def _restore(host, change):
    """Undo for one device: its override and driver as they were when the plan was made."""
    device = change.device
    base = PCI_DEVICES + "/" + device.address
    host.write(base + "/driver_override", device.override or "\n")
    driver = _current_driver(host, device.address)
    if driver != device.driver and driver is not None:
        host.write(base + "/driver/unbind", device.address)
    if device.driver and _current_driver(host, device.address) is None:
        host.write(PCI_DRIVERS + "/%s/bind" % device.driver, device.address)


def apply(host, run, planned, tools):
    """Carry out the plan; on any failure put back what was already changed and re-raise."""
    undo = []
    try:
        if planned.load_vfio:
            if not tools.modprobe:
                raise VfioError("vfio-pci is not loaded and modprobe is missing")
            checked(run, [tools.modprobe, VFIO], what="modprobe vfio-pci")
        for change in planned.changes:
            if not change.sysfs_changes:
                continue
            undo.append(lambda c=change: _restore(host, c))
            if change.state == "bound":
                _bind(host, change)
            else:
                _release(host, change, tools, run)
        # last: a failure here has put the files back already, the drivers are undone below
        write_all(planned.files)
    except (VfioError, CommandError, NotRestored, IOError, OSError) as exc:
        raise VfioError("%s. %s" % (exc, _roll_back(undo, files_restored=not isinstance(exc, NotRestored))))
    return _after_apply(run, planned, tools)


def _roll_back(undo, files_restored):
    failures = []
    for step in reversed(undo):
        try:
            step()
        except (IOError, OSError) as exc:
            failures.append(str(exc))
    if failures:
        return "Rolling back also failed, check the devices by hand: " + "; ".join(failures)
    if not files_restored:
        return "The drivers were put back; check the files named above by hand."
    return "Everything already changed was put back."


def _after_apply(run, planned, tools):
    """udev learns the new rules; /dev/vfio nodes get their labels before they are reported.

    Returns warnings: the rules are on disk and read at boot even when udev cannot be told now.
    """
    warnings = []
    if planned.rules_change:
        if not tools.udevadm:
            warnings.append("udevadm not found: the udev rules take effect at the next boot")
        else:
            rc, dummy, stderr = run([tools.udevadm, "control", "--reload"])
            if rc != 0:
                warnings.append("udevadm control --reload failed (%s): the rules take effect "
                                "at the next boot" % stderr.strip())
    if tools.udevadm and planned.state == "bound" and any(c.sysfs_changes for c in planned.changes):
        run([tools.udevadm, "settle", "--timeout=10"])
    return warnings


# ---------------------------------------------------------------- report

def _member(host, address):
    member = Device(host, address)
    return {"address": address, "id": member.pci_id, "driver": member.driver,
            "bridge": member.bridge}


def _device_result(host, change, applied):
    device = change.device
    node = "/dev/vfio/%d" % device.group if device.group is not None else None
    driver_now = _current_driver(host, device.address) if applied else change.after_driver
    members = group_members(host, device.group) if device.group is not None else []
    return {
        "address": device.address,
        "id": device.pci_id,
        "class": device.pci_class,
        "iommu_group": device.group,
        "group_members": [_member(host, a) for a in members],
        "previous_driver": change.previous_driver,
        "driver_before": device.driver,
        "driver": driver_now,
        "persistent": change.after_persistent,
        "vfio_device": node if driver_now == VFIO else None,
        "selinux_label": host.label(node.lstrip("/")) if node and driver_now == VFIO else None,
        "changed": change.sysfs_changes or change.before_persistent != change.after_persistent,
    }


def _describe_state(address, pci_id, driver, override, persistent):
    return "%s %s: driver=%s driver_override=%s at_boot=%s\n" % (
        address, pci_id, driver, override or "none", "vfio-pci" if persistent else "host")


def diff(planned):
    before = after = ""
    for change in planned.changes:
        device = change.device
        after_driver = change.after_driver or "none"
        if change.kernel_chooses:
            after_driver = "(kernel's default probe)"
        before += _describe_state(device.address, device.pci_id, device.driver or "none",
                                  device.override, change.before_persistent)
        after += _describe_state(device.address, device.pci_id, after_driver,
                                 change.after_override, change.after_persistent)
    diffs = [{"before_header": "PCI drivers", "after_header": "PCI drivers",
              "before": before, "after": after}]
    if planned.rules_change:
        diffs.append(planned.rules_change.diff())
    return diffs


def report(host, planned, applied):
    devices = [_device_result(host, change, applied) for change in planned.changes]
    return {
        "changed": planned.changed,
        "devices": devices,
        "persistence_file": "/" + RULES_FILE,
        "state_file": "/" + STATE_FILE,
        "diff": diff(planned),
    }


def _results(found):
    """The module's result from report(), whose changed and diff the Plan carries."""
    return dict((key, value) for key, value in found.items() if key not in ("changed", "diff"))


def decide(host, run, tools, devices, state="bound", persistent=True, force=False):
    """The plan for the module's whole job; applied, the result is the devices as they are after."""
    planned = plan(host, devices, state=state, persistent=persistent, force=force)
    found = report(host, planned, applied=False)
    result = Plan(planned.changed, _results(found), found["diff"], planned.warnings)

    def apply_():
        if planned.changed:
            result.warnings.extend(apply(host, run, planned, tools))
        return _results(report(host, planned, applied=True))
    result.apply = apply_
    return result
