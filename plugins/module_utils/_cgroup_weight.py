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
  passes an open connection and the ``libvirt`` module (this file imports neither);
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

SCALE_MIN = 1
SCALE_MAX = 10000
SCALE_DEFAULT = 100

THROTTLES = ("read_bytes_sec", "write_bytes_sec", "read_iops_sec", "write_iops_sec")
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
UUID_RE = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)
LIBVIRT_PID_DIR = "/run/libvirt/qemu"


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
                 version="auto", libvirt_pid_dir=LIBVIRT_PID_DIR):
        if mounts_text is None:
            mounts_text = read_file(os.path.join(proc_root, "mounts"))
        self.v1, self.v2 = parse_mounts(mounts_text)
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.dev_stat = dev_stat
        self.version = version
        self.libvirt_pid_dir = libvirt_pid_dir

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

    def bfq_loaded(self):
        """BFQ's cgroup files exist once the bfq scheduler is registered with the kernel."""
        return any(re.search(r"\bbfq\b", read_file(path, "")) for path in self._scheduler_files())

    def bfq_in_use(self):
        return any("[bfq]" in read_file(path, "") for path in self._scheduler_files())

    def _scheduler_files(self):
        return [os.path.join(self.sys_root, "block", name, "queue", "scheduler")
                for name in self.block_devices()]

    def io_file(self, version, directory=None):
        """The I/O weight file of this host: the one present in ``directory`` when it exists."""
        candidates = IO_FILES[version]
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
        return None if path is None else os.path.join(mount, path.lstrip("/"))


