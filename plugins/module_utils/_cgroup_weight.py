# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""I/O and CPU weights for guests, on cgroup v1 and v2. Private to the collection: not a public API.

One scale for every host: the cgroup v2 weight scale, 1-10000 with default 100. Each host file
gets the value mapped so that the default stays the default and ratios between guests stay
ratios: BFQ (``blkio.bfq.weight``, ``io.bfq.weight``), ``io.weight`` and ``cpu.weight`` share
the default 100 and take the number unchanged; ``cpu.shares`` has default 1024 and takes it
times 10.24. The legacy CFQ ``blkio.weight`` (default 500) also takes the number unchanged, as
libvirt does, so the classic 1000:100 split means the same on every scheduler. Where a host
file's range is narrower than the scale (BFQ: 1-1000), values outside it are refused with the
range valid on that host.

Two kinds of target:

* a libvirt domain: values go through libvirt (``setBlkioParameters`` /
  ``setSchedulerParametersFlags``) so the domain XML stays the source of truth; the caller
  passes an open ``_libvirt.Connection`` (this file imports neither libvirt nor Ansible);
* a QEMU process libvirt does not manage (found by its ``-name`` or pid): placed into a named
  cgroup by writing cgroupfs directly.

Everything is read and validated for all guests before anything is written; a failure while
writing restores what was already changed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import stat as stat_module

from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

SCALE_MIN = 1
SCALE_MAX = 10000
SCALE_DEFAULT = 100

THROTTLES = ("read_bytes_sec", "write_bytes_sec", "read_iops_sec", "write_iops_sec")
# what needs the host's weight files (throttles do not)
WEIGHTS = ("io_weight", "cpu_weight", "device_weight")
V1_THROTTLE_FILES = {
    "read_bytes_sec": "blkio.throttle.read_bps_device",
    "write_bytes_sec": "blkio.throttle.write_bps_device",
    "read_iops_sec": "blkio.throttle.read_iops_device",
    "write_iops_sec": "blkio.throttle.write_iops_device",
}
V2_THROTTLE_KEYS = {
    "read_bytes_sec": "rbps",
    "write_bytes_sec": "wbps",
    "read_iops_sec": "riops",
    "write_iops_sec": "wiops",
}
LIBVIRT_PID_DIR = "/run/libvirt/qemu"
SYSTEMD_DIR = "/run/systemd/system"


class CgroupWeightError(Exception):
    """Bad input or an unsupported host: the message says what is wrong and what is valid."""


class WeightFile(object):
    """A cgroup file holding a weight: its range on the host and how the scale maps onto it."""

    def __init__(self, name, version, low, high, numerator=1, denominator=1, device_file=None):
        self.name = name
        self.version = version
        self.low = low
        self.high = high
        self.numerator = numerator
        self.denominator = denominator
        self.device_file = device_file

    def to_host(self, weight):
        return weight * self.numerator // self.denominator

    def scale_range(self):
        low = -(-self.low * self.denominator // self.numerator)
        high = self.high * self.denominator // self.numerator
        return max(SCALE_MIN, low), min(SCALE_MAX, high)

    @property
    def bfq(self):
        return ".bfq." in self.name

    def checked(self, weight, guest, option):
        """The host value for ``weight``; CgroupWeightError with this host's range otherwise."""
        low, high = self.scale_range()
        if not low <= weight <= high:
            raise CgroupWeightError(
                "guest %s: %s %s is out of range on this host: it lands in %s (cgroup v%d), "
                "where valid %s values are %d-%d (the scale is %d-%d, default %d)"
                % (guest, option, weight, self.name, self.version, option, low, high,
                   SCALE_MIN, SCALE_MAX, SCALE_DEFAULT))
        return self.to_host(weight)


IO_V1_BFQ = WeightFile("blkio.bfq.weight", 1, 1, 1000, device_file="blkio.bfq.weight_device")
IO_V1_CFQ = WeightFile("blkio.weight", 1, 10, 1000, device_file="blkio.weight_device")
IO_V2_BFQ = WeightFile("io.bfq.weight", 2, 1, 1000, device_file="io.bfq.weight")
IO_V2 = WeightFile("io.weight", 2, 1, 10000, device_file="io.weight")
CPU_V1 = WeightFile("cpu.shares", 1, 2, 262144, numerator=1024, denominator=100)
CPU_V2 = WeightFile("cpu.weight", 2, 1, 10000)

# libvirt's own preference when both exist: BFQ first
IO_FILES = {1: (IO_V1_BFQ, IO_V1_CFQ), 2: (IO_V2_BFQ, IO_V2)}
CPU_FILES = {1: CPU_V1, 2: CPU_V2}
V1_NAMES = {"io": "blkio", "cpu": "cpu"}


# ---------------------------------------------------------------- reading cgroupfs formats

def parse_weights(text):
    """``default N`` / ``N`` and ``MAJ:MIN N`` lines -> (default or None, {MAJ:MIN: N})."""
    default, devices = None, {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 1 and fields[0].isdigit():
            default = int(fields[0])
        elif len(fields) == 2 and fields[0] == "default":
            default = int(fields[1])
        elif len(fields) == 2 and ":" in fields[0]:
            devices[fields[0]] = int(fields[1])
    return default, devices


def parse_v1_throttle(text):
    return dict((dev, int(value)) for dev, value in
                (line.split() for line in text.splitlines() if line.strip()))


def parse_io_max(text):
    """cgroup v2 io.max -> {MAJ:MIN: {throttle option: value}}, unlimited entries left out."""
    by_key = dict((key, option) for option, key in V2_THROTTLE_KEYS.items())
    result = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        limits = {}
        for pair in fields[1:]:
            key, _sep, value = pair.partition("=")
            if key in by_key and value != "max":
                limits[by_key[key]] = int(value)
        result[fields[0]] = limits
    return result


def parse_mounts(text):
    """/proc/mounts -> (cgroup v1 {controller: mountpoint}, cgroup v2 mountpoint or None)."""
    v1, v2 = {}, None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint = fields[1].replace("\\040", " ")
        if fields[2] == "cgroup2" and v2 is None:
            v2 = mountpoint
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                v1.setdefault(option, mountpoint)
    return v1, v2


def read_file(path, default=None):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV) and default is not None:
            return default
        raise


# ---------------------------------------------------------------- the host

class Host(object):
    """Where the io and cpu controllers live on this host, and its block devices.

    Paths are parameters so unit tests can build a cgroup v2 tree this machine lacks.
    """

    def __init__(self, mounts_text=None, sys_root="/sys", proc_root="/proc", dev_stat=os.stat,
                 version="auto", libvirt_pid_dir=LIBVIRT_PID_DIR, systemd_dir=SYSTEMD_DIR):
        if mounts_text is None:
            mounts_text = read_file(os.path.join(proc_root, "mounts"))
        self.v1, self.v2 = parse_mounts(mounts_text)
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.dev_stat = dev_stat
        self.version = version
        self.libvirt_pid_dir = libvirt_pid_dir
        self.systemd_dir = systemd_dir

    def v2_controllers(self, directory=None):
        if self.v2 is None:
            return []
        return read_file(os.path.join(directory or self.v2, "cgroup.controllers"), "").split()

    def locate(self, controller):
        """(cgroup version, mountpoint) holding ``controller`` (``io`` or ``cpu``)."""
        v1_mount = self.v1.get(V1_NAMES[controller])
        in_v2 = controller in self.v2_controllers()
        if self.version in ("auto", "1") and v1_mount:
            return 1, v1_mount
        if self.version in ("auto", "2") and in_v2:
            return 2, self.v2
        raise CgroupWeightError(self._missing(controller, v1_mount, in_v2))

    def _missing(self, controller, v1_mount, in_v2):
        if self.v2 is not None:
            v2_text = "the cgroup v2 hierarchy at %s enables: %s" % (
                self.v2, ", ".join(self.v2_controllers()) or "no controllers")
        else:
            v2_text = "no cgroup v2 hierarchy is mounted"
        if v1_mount:
            v1_text = "it is bound to the cgroup v1 hierarchy at %s" % v1_mount
        else:
            v1_text = "no cgroup v1 %s hierarchy is mounted" % V1_NAMES[controller]
        wanted = "" if self.version == "auto" else " in cgroup v%s" % self.version
        hint = ""
        if self.version != "auto" and (v1_mount or in_v2):
            hint = "; use cgroup_version auto"
        return "the %s controller is not available%s on this host: %s; %s%s" % (
            controller, wanted, v2_text, v1_text, hint)

    def systemd_booted(self):
        """systemd runs the host (sd_booted): libvirt then puts guests in machine scopes."""
        return os.path.isdir(self.systemd_dir)

    def bfq_loaded(self):
        """BFQ's cgroup files exist once the bfq scheduler is registered with the kernel."""
        return self.scheduler_offered("bfq")

    def scheduler_offered(self, name):
        return name in self.schedulers()

    def schedulers(self):
        """The I/O schedulers the block devices offer, sorted."""
        text = " ".join(read_file(path, "") for path in self._scheduler_files())
        return sorted(set(re.findall(r"[\w-]+", text)))

    def bfq_in_use(self):
        return any("[bfq]" in read_file(path, "") for path in self._scheduler_files())

    def iocost_enabled(self):
        """cgroup v2 io.weight is enforced by iocost, which is off until io.cost.qos enables it."""
        text = read_file(os.path.join(self.v2, "io.cost.qos"), "") if self.v2 else ""
        return "enable=1" in text.split()

    def _scheduler_files(self):
        return [os.path.join(self.sys_root, "block", name, "queue", "scheduler")
                for name in self.block_devices()]

    def io_file(self, version, directory=None):
        """The I/O weight file of this host: the one present in ``directory`` when it exists."""
        candidates = IO_FILES[version]
        if version == 1 and not self.bfq_loaded() and not self.scheduler_offered("cfq"):
            raise CgroupWeightError(
                "cgroup v1 cannot weigh I/O on this host: its I/O weights come from the BFQ "
                "scheduler (blkio.bfq.weight) or CFQ (blkio.weight, before Linux 5.0), and no block "
                "device offers either (%s); load BFQ (modprobe bfq), use cgroup v2 (io.weight), or "
                "leave io_weight out" % (", ".join(self.schedulers()) or "no block devices"))
        if directory and os.path.isdir(directory):
            for weight_file in candidates:
                if os.path.exists(os.path.join(directory, weight_file.name)):
                    return weight_file
            raise CgroupWeightError(
                "the io controller has no weight file in %s (none of %s): the kernel has "
                "neither BFQ nor %s" % (directory, ", ".join(f.name for f in candidates),
                                        candidates[1].name))
        return candidates[0] if self.bfq_loaded() else candidates[1]

    @staticmethod
    def cpu_file(version):
        return CPU_FILES[version]

    def block_devices(self):
        block = os.path.join(self.sys_root, "block")
        return sorted(os.listdir(block)) if os.path.isdir(block) else []

    def device(self, path):
        """``MAJ:MIN`` of the whole-disk block device at ``path``."""
        known = ", ".join("/dev/" + name for name in self.block_devices()) or "none"
        try:
            info = self.dev_stat(path)
        except OSError:
            raise CgroupWeightError("unknown device %s: no such file; block devices on this "
                                    "host: %s" % (path, known))
        if not stat_module.S_ISBLK(info.st_mode):
            raise CgroupWeightError("unknown device %s: not a block device; block devices on "
                                    "this host: %s" % (path, known))
        number = "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev))
        if os.path.exists(os.path.join(self.sys_root, "dev", "block", number, "partition")):
            raise CgroupWeightError("device %s (%s) is a partition: cgroup weights and throttles "
                                    "apply to whole disks (%s)" % (path, number, known))
        return number

    def scheduler(self, number):
        text = read_file(os.path.join(self.sys_root, "dev", "block", number, "queue",
                                      "scheduler"), "")
        match = re.search(r"\[([^\]]+)\]", text)
        return match.group(1) if match else None

    def process_cgroups(self, pid):
        """{controller or '' for v2: path} from /proc/PID/cgroup."""
        text = read_file(os.path.join(self.proc_root, str(pid), "cgroup"), "")
        result = {}
        for line in text.splitlines():
            _hid, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                result[name] = path
        return result

    def cgroup_dir(self, pid, controller):
        """Absolute cgroupfs directory of ``pid`` for ``controller``, or None."""
        version, mount = self.locate(controller)
        groups = self.process_cgroups(pid)
        path = groups.get(V1_NAMES[controller] if version == 1 else "")
        return None if path is None else os.path.normpath(os.path.join(mount, path.lstrip("/")))


# ---------------------------------------------------------------- the desired state

def desired(guest):
    """The values a guest entry asks for: [(key, kind, device path or None, value)]."""
    wanted = []
    for kind in ("io_weight", "cpu_weight"):
        if guest.get(kind) is not None:
            wanted.append((kind, kind, None, guest[kind]))
    for device in guest.get("devices") or []:
        for option in ("weight",) + THROTTLES:
            if device.get(option) is not None:
                kind = "device_weight" if option == "weight" else option
                wanted.append(("%s[%s]" % (kind, device["path"]), kind, device["path"],
                               device[option]))
    return wanted


def validate_entry(guest):
    """Checks that need no host: the scale and non-negative throttles."""
    for kind in ("io_weight", "cpu_weight"):
        _check_scale(guest["name"], kind, guest.get(kind))
    for device in guest.get("devices") or []:
        _check_scale(guest["name"], "weight of %s" % device["path"], device.get("weight"))
        for kind in THROTTLES:
            if (device.get(kind) or 0) < 0:
                raise CgroupWeightError("guest %s: %s of %s must be 0 (no limit) or more"
                                        % (guest["name"], kind, device["path"]))


def _check_scale(guest, option, value):
    if value is not None and not SCALE_MIN <= value <= SCALE_MAX:
        raise CgroupWeightError("guest %s: %s %s is outside the weight scale %d-%d (default %d)"
                                % (guest, option, value, SCALE_MIN, SCALE_MAX, SCALE_DEFAULT))


class Setting(object):
    """One value of one guest in one place: what is there now and what should be."""

    def __init__(self, guest, key, kind, scope, where, before, after, **extra):
        self.guest = guest
        self.key = key
        self.kind = kind
        self.scope = scope
        self.where = where
        self.before = before
        self.after = after
        self.requested = extra.get("requested")
        self.device = extra.get("device")
        self.number = extra.get("number")
        self.weight_file = extra.get("weight_file")

    @property
    def changed(self):
        return self.before != self.after

    def as_dict(self):
        return {"key": self.key, "scope": self.scope, "where": self.where,
                "requested": self.requested, "before": self.before, "after": self.after,
                "changed": self.changed}


def _device_where(io_file, version, kind):
    if kind == "device_weight":
        return io_file.device_file
    return V1_THROTTLE_FILES[kind] if version == 1 else "io.max"


def check_device_weight(host, weight_file, guest, path, number, value):
    """The host value of a per-device weight; the kernel takes BFQ ones only on bfq disks."""
    scheduler = host.scheduler(number)
    if weight_file.bfq and scheduler != "bfq":
        raise CgroupWeightError(
            "guest %s: a per-device weight for %s needs the bfq scheduler (it lands in %s), but "
            "the device uses %s; switch it to bfq (/sys/block/%s/queue/scheduler) or leave the "
            "device weight out" % (guest, path, weight_file.device_file, scheduler,
                                   os.path.basename(os.path.realpath(
                                       os.path.join(host.sys_root, "dev", "block", number)))))
    return weight_file.checked(value, guest, "weight of %s" % path)


# ---------------------------------------------------------------- libvirt domains

def _libvirt_devices(text):
    """libvirt's ``path,value,path,value`` -> {path: value}."""
    items = [item for item in (text or "").split(",") if item != ""]
    return dict((items[i], int(items[i + 1])) for i in range(0, len(items) - 1, 2))


def _libvirt_param(kind):
    return {"io_weight": "weight", "cpu_weight": "cpu_shares",
            "device_weight": "device_weight"}.get(kind, "device_" + kind)


class DomainTarget(object):
    """A libvirt domain, reached through an open connection and the ``libvirt`` module."""

    target = "domain"

    def __init__(self, conn, guest, host, scope):
        self.libvirt = conn.libvirt
        self.host = host
        self.spec = guest
        domain = conn.domain(guest["name"])
        self.dom = domain.handle
        self.name = domain.name
        self.scopes = self._scopes(scope, domain.active, domain.persistent)

    def _scopes(self, scope, active, persistent):
        if scope == "live" and not active:
            raise CgroupWeightError("guest %s is not running: scope live needs a running domain "
                                    "(use config or both)" % self.name)
        if scope == "config" and not persistent:
            raise CgroupWeightError("guest %s is transient: it has no persistent config (use "
                                    "live or both)" % self.name)
        scopes = []
        if scope in ("config", "both") and persistent:
            scopes.append("config")
        if scope in ("live", "both") and active:
            scopes.append("live")
        return scopes

    def flag(self, scope):
        return (self.libvirt.VIR_DOMAIN_AFFECT_LIVE if scope == "live"
                else self.libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def live_dirs(self, controller):
        """(libvirt's cgroup of the running domain, the cgroup holding its weights) or Nones.

        libvirt keeps the QEMU main thread in ``emulator`` below its cgroup and writes device
        values there. On cgroup v2 with systemd its cgroup is ``libvirt`` below the machine
        scope, and the weights go on the scope: libvirt sets them as IOWeight/CPUWeight through
        systemd's D-Bus API, and systemd writes the scope's io.weight and cpu.weight.
        """
        if "live" not in self.scopes:
            return None, None
        text = read_file(os.path.join(self.host.libvirt_pid_dir, self.name + ".pid"), "")
        group = self.host.cgroup_dir(int(text), controller) if text.strip().isdigit() else None
        if group and os.path.basename(group) == "emulator":
            group = os.path.dirname(group)
        weights = group
        if group and os.path.basename(group) == "libvirt" and self.host.locate(controller)[0] == 2:
            weights = os.path.dirname(group)
        return group, weights

    def current(self, scope, kinds):
        # read only the kinds asked for: libvirt 9.0 cannot read a running guest's blkio parameters
        # at all where the kernel has no I/O weight (neither BFQ nor CFQ), throttles included
        blkio = self.dom.blkioParameters(self.flag(scope)) if kinds - {"cpu_weight"} else {}
        sched = self.dom.schedulerParametersFlags(self.flag(scope)) if "cpu_weight" in kinds else {}
        values = {"io_weight": blkio.get("weight"), "cpu_weight": sched.get("cpu_shares")}
        for kind in ("device_weight",) + THROTTLES:
            values[kind] = _libvirt_devices(blkio.get(_libvirt_param(kind)))
        return values

    def plan(self):
        io_version = self.host.locate("io")[0]
        io_group, io_weights = self.live_dirs("io")
        files = {}

        def weight_file(controller):
            # looked up when a weight is asked for: throttles need none, and a host may have none
            if controller not in files:
                files[controller] = (self.host.io_file(io_version, io_weights) if controller == "io"
                                     else self.host.cpu_file(self.host.locate("cpu")[0]))
            return files[controller]
        dirs = {"io_weight": io_weights, "cpu_weight": self.live_dirs("cpu")[1]}
        settings = []
        wanted = desired(self.spec)
        kinds = set(kind for _key, kind, _path, _value in wanted)
        for scope in self.scopes:
            current = self.current(scope, kinds)
            for key, kind, path, value in wanted:
                controller = "cpu" if kind == "cpu_weight" else "io"
                used = weight_file(controller) if kind in WEIGHTS else None
                if kind in ("io_weight", "cpu_weight"):
                    filename = used.name
                    after = used.checked(value, self.name, kind)
                    before, number = current[kind], None
                else:
                    filename = _device_where(used, io_version, kind)
                    after, before, number = self._device(used, current, kind, path, value)
                where = "domain XML (libvirt %s)" % _libvirt_param(kind)
                if scope == "live":
                    directory = dirs.get(kind, io_group)
                    where = os.path.join(directory, filename) if directory \
                        else "libvirt %s (live)" % _libvirt_param(kind)
                settings.append(Setting(self.name, key, kind, scope, where, before, after,
                                        requested=value, device=path, number=number,
                                        weight_file=used))
        return settings

    def _device(self, io_file, current, kind, path, value):
        number = self.host.device(path)
        if kind == "device_weight":
            if io_file.version == 2 and self.host.systemd_booted():
                raise CgroupWeightError(
                    "guest %s: per-device weight for %s is refused on this host: on cgroup v2 "
                    "with systemd libvirt hands it to systemd as IODeviceWeight, and libvirt 9.0 "
                    "aborts doing so (libvirtd crashes at once for a running guest, and at every "
                    "start of a guest whose definition holds one); use io_weight, or a per-device "
                    "throttle" % (self.name, path))
            if io_file is IO_V1_BFQ:
                raise CgroupWeightError(
                    "guest %s: per-device weight for %s is not supported on this host: libvirt "
                    "writes per-device weights on cgroup v1 only to blkio.weight_device (CFQ), "
                    "and this host uses BFQ (blkio.bfq.weight_device); use io_weight, or "
                    "cgroup v2" % (self.name, path))
            value = check_device_weight(self.host, io_file, self.name, path, number, value)
        before = 0
        for known_path, known_value in current[kind].items():
            if known_path == path or self._same_device(known_path, number):
                before = known_value
        return value, before, number

    def _same_device(self, path, number):
        try:
            return self.host.device(path) == number
        except CgroupWeightError:
            return False

    def write(self, settings, use_before=False):
        for scope in ("config", "live"):
            blkio, sched = {}, {}
            for setting in (s for s in settings if s.scope == scope):
                value = setting.before if use_before else setting.after
                param = _libvirt_param(setting.kind)
                if setting.kind == "cpu_weight":
                    sched[param] = value
                elif setting.kind == "io_weight":
                    blkio[param] = value
                else:
                    entry = "%s,%d" % (setting.device, value)
                    blkio[param] = blkio[param] + "," + entry if param in blkio else entry
            if blkio:
                self.dom.setBlkioParameters(blkio, self.flag(scope))
            if sched:
                self.dom.setSchedulerParametersFlags(sched, self.flag(scope))


# ---------------------------------------------------------------- bare QEMU processes

def qemu_name(argv):
    """The guest name in a QEMU command line (``-name N`` or ``-name guest=N,...``), or None."""
    if not argv or not os.path.basename(argv[0]).startswith(("qemu-system", "qemu-kvm")):
        return None
    for index, arg in enumerate(argv[:-1]):
        if arg in ("-name", "--name"):
            parts = argv[index + 1].split(",")
            for part in parts:
                if part.startswith("guest="):
                    return part[len("guest="):]
            return parts[0] if "=" not in parts[0] else None
    return None


def qemu_processes(proc_root="/proc"):
    """{pid: guest name} of the QEMU processes running on this host."""
    found = {}
    for entry in os.listdir(proc_root):
        if entry.isdigit():
            name = qemu_name(read_file(os.path.join(proc_root, entry, "cmdline"), "").split("\0"))
            if name is not None:
                found[int(entry)] = name
    return found


class ProcessTarget(object):
    """A QEMU process outside libvirt, moved into a named cgroup in each hierarchy it needs."""

    target = "process"

    def __init__(self, guest, host):
        self.host = host
        self.spec = guest
        self.name = guest["name"]
        self.pid = self._find(guest)
        self.cgroup = (guest.get("cgroup") or "kvmsec/" + self.name).strip("/")
        if not self.cgroup or ".." in self.cgroup.split("/"):
            raise CgroupWeightError("guest %s: cgroup %r is not a relative cgroup path"
                                    % (self.name, guest.get("cgroup")))
        self.created = []
        self.enabled = []
        self.moved = []
        self.written = []

    def _find(self, guest):
        running = qemu_processes(self.host.proc_root)
        listing = ", ".join("%s (pid %d)" % (name, pid) for pid, name in sorted(running.items()))
        if guest.get("pid"):
            pids = [pid for pid in running if pid == guest["pid"]]
            missing = "pid %d is not a running QEMU process" % guest["pid"]
        else:
            pids = sorted(pid for pid, name in running.items() if name == guest["name"])
            missing = "no QEMU process runs with -name %s" % guest["name"]
        if not pids:
            raise CgroupWeightError("unknown guest %s: %s; known guests: %s"
                                    % (guest["name"], missing, listing or "none"))
        if len(pids) > 1:
            raise CgroupWeightError("guest %s is ambiguous: QEMU processes %s all use that name; "
                                    "give pid" % (guest["name"], ", ".join(map(str, pids))))
        pid_file = os.path.join(self.host.libvirt_pid_dir, running[pids[0]] + ".pid")
        if read_file(pid_file, "").strip() == str(pids[0]):
            raise CgroupWeightError("guest %s (pid %d) is managed by libvirt: use target domain, "
                                    "so libvirt keeps its cgroups" % (guest["name"], pids[0]))
        return pids[0]

    def directory(self, controller):
        return os.path.join(self.host.locate(controller)[1], self.cgroup)

    def plan(self):
        wanted = desired(self.spec)
        controllers = sorted(set("cpu" if kind == "cpu_weight" else "io"
                                 for _key, kind, _path, _value in wanted))
        settings = [self._membership(controller) for controller in controllers]
        settings.extend(self._setting(*item) for item in wanted)
        return settings

    def _membership(self, controller):
        version, mount = self.host.locate(controller)
        if version == 2:
            enabled = read_file(os.path.join(mount, "cgroup.subtree_control"), "").split()
            if controller not in enabled:
                raise CgroupWeightError(
                    "the %s controller is not enabled for child cgroups of %s (its "
                    "cgroup.subtree_control has: %s); systemd enables it on systemd hosts"
                    % (controller, mount, " ".join(enabled) or "nothing"))
        directory = self.directory(controller)
        return Setting(self.name, "cgroup %s" % controller, "member", "live",
                       os.path.join(directory, "cgroup.procs"),
                       self.host.cgroup_dir(self.pid, controller), directory)

    def _setting(self, key, kind, path, value):
        controller = "cpu" if kind == "cpu_weight" else "io"
        version = self.host.locate(controller)[0]
        directory = self.directory(controller)
        weight_file = None
        if kind in WEIGHTS:
            weight_file = (self.host.cpu_file(version) if controller == "cpu"
                           else self.host.io_file(version, directory))
        if kind in ("io_weight", "cpu_weight"):
            where = os.path.join(directory, weight_file.name)
            before = parse_weights(read_file(where, ""))[0]
            return Setting(self.name, key, kind, "live", where, before,
                           weight_file.checked(value, self.name, kind), requested=value,
                           weight_file=weight_file)
        number = self.host.device(path)
        where = os.path.join(directory, _device_where(weight_file, version, kind))
        if kind == "device_weight":
            after = check_device_weight(self.host, weight_file, self.name, path, number, value)
            current = parse_weights(read_file(where, ""))[1]
        elif version == 1:
            after, current = value, parse_v1_throttle(read_file(where, ""))
        else:
            after = value
            current = dict((dev, limits.get(kind, 0)) for dev, limits in
                           parse_io_max(read_file(where, "")).items())
        return Setting(self.name, key, kind, "live", where, current.get(number, 0), after,
                       requested=value, device=path, number=number, weight_file=weight_file)

    def write(self, settings, use_before=False):
        if use_before:
            self._undo()
            return
        for setting in settings:
            if setting.kind == "member":
                self._make(setting.after)
                _write(setting.where, str(self.pid))
                self.moved.append(setting)
        for setting in settings:
            if setting.kind != "member":
                self.written.append(setting)
                self._write_value(setting, setting.after)

    def _make(self, directory):
        mount = directory[:-len(self.cgroup)].rstrip("/")
        parts = self.cgroup.split("/")
        for depth in range(1, len(parts) + 1):
            path = os.path.join(mount, *parts[:depth])
            if not os.path.isdir(path):
                os.mkdir(path)
                self.created.append(path)
            if mount == self.host.v2 and depth < len(parts):
                self._delegate(path)

    def _delegate(self, path):
        """cgroup v2 offers a controller's files to a child only if its parent delegates it."""
        enabled = read_file(os.path.join(path, "cgroup.subtree_control"), "").split()
        for controller in ("io", "cpu"):
            if (path, controller) in self.enabled or controller in enabled:
                continue
            if controller in self.host.v2_controllers(path):
                _write(os.path.join(path, "cgroup.subtree_control"), "+" + controller)
                self.enabled.append((path, controller))

    @staticmethod
    def _write_value(setting, value):
        if setting.kind in ("io_weight", "cpu_weight"):
            content = str(value)
        elif setting.where.endswith("io.max"):
            content = "%s %s=%s" % (setting.number, V2_THROTTLE_KEYS[setting.kind], value or "max")
        else:
            content = "%s %d" % (setting.number, value)
        _write(setting.where, content)

    def _undo(self):
        """Every step is tried even if one fails, so one failure does not strand the rest."""
        steps = [(self._write_value, (setting, setting.before)) for setting in self.written
                 if setting.before is not None and os.path.exists(setting.where)]
        steps += [(_write, (os.path.join(setting.before, "cgroup.procs"), str(self.pid)))
                  for setting in self.moved if setting.before]
        steps += [(_write, (os.path.join(path, "cgroup.subtree_control"), "-" + controller))
                  for path, controller in reversed(self.enabled)]
        steps += [(os.rmdir, (path,)) for path in reversed(self.created)]
        problems = []
        for step, args in steps:
            try:
                step(*args)
            except (IOError, OSError, CgroupWeightError) as exc:
                problems.append(str(exc))
        self.written, self.moved, self.enabled, self.created = [], [], [], []
        if problems:
            raise CgroupWeightError("; ".join(problems))


def _write(path, content):
    """cgroupfs files take one write(2) each: no temp file and rename, unlike regular files."""
    try:
        with open(path, "w") as handle:
            handle.write(content + "\n")
    except (IOError, OSError) as exc:
        raise CgroupWeightError("writing %r to %s failed: %s"
                                % (content, path, exc.strerror or exc))


# ---------------------------------------------------------------- plan, apply, report

def build_targets(guests, host, scope, conn):
    """A target per guest entry; ``conn``, a ``_libvirt.Connection``, is needed only when a
    domain is listed."""
    targets = []
    for guest in guests:
        validate_entry(guest)
        if guest.get("target", "domain") == "process":
            targets.append(ProcessTarget(guest, host))
            continue
        targets.append(DomainTarget(conn, guest, host, scope))
    names = [target.name for target in targets]
    duplicates = sorted(set(name for name in names if names.count(name) > 1))
    if duplicates:
        raise CgroupWeightError("guests listed more than once: %s" % ", ".join(duplicates))
    return targets


def plan(targets):
    """[(target, [Setting])] for every target; raises before anything is written."""
    return [(target, target.plan()) for target in targets]


def notes(host, planned):
    """Weights that the host's block layer ignores: worth a warning, not a failure."""
    result = []
    files = set(s.weight_file for _t, settings in planned for s in settings
                if s.kind == "io_weight")
    bfq = [weight_file for weight_file in files if weight_file.bfq]
    if bfq and not host.bfq_in_use():
        result.append("I/O weights land in %s, but no block device on this host uses the bfq "
                      "scheduler, so they take effect only once one does" % bfq[0].name)
    if IO_V2 in files and not host.iocost_enabled():
        result.append("I/O weights land in io.weight, which only the kernel's iocost controller "
                      "enforces, and %s/io.cost.qos enables it on no block device: enable it on "
                      "the guests' disks (MAJ:MIN enable=1) or switch them to the bfq scheduler, "
                      "or the weights change nothing" % host.v2)
    return result


def apply(planned):
    """Write what differs; on any failure restore everything written so far and re-raise."""
    done = []
    try:
        for target, settings in planned:
            changes = [setting for setting in settings if setting.changed]
            if changes:
                done.append((target, changes))
                target.write(changes)
    except Exception as exc:
        problems = _restore(done)
        if problems:
            raise CgroupWeightError("%s; restoring the previous values also failed: %s"
                                    % (exc, "; ".join(problems)))
        raise


def _restore(done):
    problems = []
    for target, changes in reversed(done):
        try:
            target.write(changes, use_before=True)
        except Exception as exc:  # pylint: disable=broad-except
            problems.append("guest %s: %s" % (target.name, exc))
    return problems


def report(planned):
    """(changed, per-guest results, diff) for the module."""
    guests, before, after = [], {}, {}
    for target, settings in planned:
        entry = {"name": target.name, "target": target.target,
                 "changed": any(s.changed for s in settings),
                 "settings": [s.as_dict() for s in settings]}
        if target.target == "process":
            entry["pid"] = target.pid
        guests.append(entry)
        before[target.name] = dict(("%s %s" % (s.scope, s.key), s.before) for s in settings)
        after[target.name] = dict(("%s %s" % (s.scope, s.key), s.after) for s in settings)
    changed = any(entry["changed"] for entry in guests)
    return changed, guests, {"before": before, "after": after}


def decide(guests, host, scope, conn=None):
    """The plan for the module's whole job: every guest's weights and throttles."""
    planned = plan(build_targets(guests, host, scope, conn))
    changed, results, diff = report(planned)
    return Plan(changed, {"guests": results}, diff, notes(host, planned), lambda: apply(planned))
