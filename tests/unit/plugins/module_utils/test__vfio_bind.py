"""Unit tests of the vfio_bind core, without Ansible, on fake sysfs trees.

The development machine's kernel has no VFIO and no IOMMU, so the host is a directory tree in
tmp_path built from what the lab VM really shows (`ls -l /sys/bus/pci/devices/*/`, the
iommu_group and driver links, class/vendor/device/config files, /proc/self/mountinfo,
/proc/net/route and ipv6_route of a lab boot; see LAB below). What cannot exist on this
machine is the kernel's reaction to sysfs stores (driver_override, bind, unbind,
drivers_probe) and to modprobe: FakeKernel stands in for exactly that, at the sysfs write
and process boundary. The lab tier (tests/integration/on_lab_vm/test_vfio_bind.py) runs the same
code against the real kernel.
"""

import json
import os

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _vfio_bind as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

# address, vendor, device, class, header type byte (0x80 = multi-function), driver, group
LAB = [
    ("0000:00:00.0", "8086", "29c0", "0x060000", 0x00, None, 0),
    ("0000:00:01.0", "1234", "1111", "0x030000", 0x00, "bochs-drm", 1),
    ("0000:00:02.0", "1af4", "1000", "0x020000", 0x00, "virtio-pci", 2),
    ("0000:00:03.0", "1234", "11e8", "0x00ff00", 0x00, None, 3),
    ("0000:00:04.0", "1af4", "1001", "0x010000", 0x00, "virtio-pci", 4),
    ("0000:00:1f.0", "8086", "2918", "0x060100", 0x80, "lpc_ich", 5),
    ("0000:00:1f.2", "8086", "2922", "0x010601", 0x80, "ahci", 5),
    ("0000:00:1f.3", "8086", "2930", "0x0c0500", 0x80, "i801_smbus", 5),
]
LAB_DRIVERS = ["8250_mid", "ahci", "bochs-drm", "i801_smbus", "lpc_ich", "pcieport", "serial",
               "shpchp", "virtio-pci"]
LAB_MOUNTINFO = """\
21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw,seclabel
22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
23 26 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,seclabel,size=1465720k
25 26 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,seclabel
26 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,seclabel,errors=remount-ro
31 21 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
"""
LAB_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
LAB_IPV6_ROUTE = """\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000400 00000001 00000000 00450003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""
LAB_CMDLINE = ("root=/dev/vda rw console=ttyS0 net.ifnames=0 security=selinux selinux=1 "
               "enforcing=1 intel_iommu=on\n")
# the native driver each device's modalias would load (what udev + modprobe do)
NATIVE = {"0000:00:01.0": "bochs-drm", "0000:00:02.0": "virtio-pci", "0000:00:04.0": "virtio-pci",
          "0000:00:1f.0": "lpc_ich", "0000:00:1f.2": "ahci", "0000:00:1f.3": "i801_smbus"}
VFIO_LABEL = "system_u:object_r:vfio_device_t:s0"


def write(root, relative, content):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as handle:
        handle.write(content)


def link(root, relative, target_relative):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(os.path.relpath(os.path.join(root, target_relative), os.path.dirname(path)), path)


class FakeKernel(core.Host):
    """The kernel's side of sysfs stores and modprobe, as the lab VM showed it behaves."""

    def __init__(self, root, native=None, refuse=()):
        super(FakeKernel, self).__init__(str(root))
        self.native = dict(NATIVE if native is None else native)
        self.refuse = set(refuse)  # addresses vfio-pci's probe fails for
        self.writes = []
        self.commands = []

    # -- helpers over the tree
    def device_dir(self, address):
        return self.resolve("sys/bus/pci/devices/" + address)

    def driver_of(self, address):
        return self.link_name("sys/bus/pci/devices/%s/driver" % address)

    def attach(self, address, driver):
        device = self.device_dir(address)
        link(self.root, device + "/driver", "sys/bus/pci/drivers/" + driver)
        link(self.root, "sys/bus/pci/drivers/%s/%s" % (driver, address), device)
        if driver == core.VFIO:
            group = self.link_name(device + "/iommu_group")
            write(self.root, "dev/vfio/" + group, "")
            os.setxattr(self.path("dev/vfio/" + group), "security.selinux",
                        VFIO_LABEL.encode() + b"\0")

    def detach(self, address):
        driver = self.driver_of(address)
        os.unlink(self.path(self.device_dir(address) + "/driver"))
        os.unlink(self.path("sys/bus/pci/drivers/%s/%s" % (driver, address)))
        if driver == core.VFIO:
            group = self.link_name(self.device_dir(address) + "/iommu_group")
            os.unlink(self.path("dev/vfio/" + group))

    def override(self, address):
        text = self.read("sys/bus/pci/devices/%s/driver_override" % address).strip()
        return None if text == "(null)" else text

    def loaded(self, driver):
        return self.exists("sys/bus/pci/drivers/" + driver)

    def matches(self, address, driver):
        wanted = self.override(address) or self.native.get(address)
        return wanted == driver and self.loaded(driver)

    def probe(self, address):
        for driver in (self.override(address), self.native.get(address)):
            if driver and self.matches(address, driver):
                if driver == core.VFIO and address in self.refuse:
                    raise OSError(22, "Invalid argument")
                self.attach(address, driver)
                return

    # -- the kernel's sysfs stores
    def write(self, relative, value):
        self.writes.append((relative, value))
        parts = relative.split("/")
        value = value.strip()
        if parts[-1] == "driver_override":
            write(self.root, relative, (value or "(null)") + "\n")
        elif relative == "sys/bus/pci/drivers_probe":
            if self.driver_of(value) is None:
                self.probe(value)
        elif parts[-1] == "unbind":
            driver = parts[-2] if parts[-2] != "driver" else self.driver_of(parts[-3])
            if self.driver_of(value) != driver:
                raise OSError(19, "No such device")
            self.detach(value)
        elif parts[-1] == "bind":
            if self.driver_of(value) is not None:
                raise OSError(16, "Device or resource busy")
            if not self.matches(value, parts[-2]):
                raise OSError(19, "No such device")
            self.attach(value, parts[-2])
        else:
            raise AssertionError("unexpected sysfs store %s" % relative)

    # -- modprobe and udevadm, the only commands the core runs
    def run(self, argv, data=None):
        self.commands.append(list(argv))
        if argv[0] == "modprobe" and argv[-1] == core.VFIO:
            self.load(core.VFIO)
        elif argv[0] == "modprobe":
            for address, driver in self.native.items():
                if argv[-1] == self.read("sys/bus/pci/devices/%s/modalias" % address).strip():
                    self.load(driver)
        return 0, "", ""

    def load(self, driver):
        for name in ("bind", "unbind", "new_id"):
            write(self.root, "sys/bus/pci/drivers/%s/%s" % (driver, name), "")
        for address in self.listdir("sys/bus/pci/devices"):
            if self.driver_of(address) is None and self.matches(address, driver):
                self.attach(address, driver)


def add_device(root, address, vendor, device, pci_class, header, driver, group, parent="pci0000:00"):
    base = "sys/devices/%s/%s" % (parent, address)
    write(root, base + "/vendor", "0x%s\n" % vendor)
    write(root, base + "/device", "0x%s\n" % device)
    write(root, base + "/class", pci_class + "\n")
    write(root, base + "/driver_override", "(null)\n")
    write(root, base + "/modalias", "pci:v0000%sd0000%s\n" % (vendor.upper(), device.upper()))
    write(root, base + "/config", bytes([0] * 14 + [header, 0]) + bytes(48))
    if pci_class.startswith("0x03"):
        write(root, base + "/boot_vga", "1\n" if address == "0000:00:01.0" else "0\n")
    link(root, "sys/bus/pci/devices/" + address, base)
    if group is not None:
        link(root, base + "/iommu_group", "sys/kernel/iommu_groups/%d" % group)
        link(root, "sys/kernel/iommu_groups/%d/devices/%s" % (group, address), base)
    if driver:
        link(root, base + "/driver", "sys/bus/pci/drivers/" + driver)
        link(root, "sys/bus/pci/drivers/%s/%s" % (driver, address), base)
    return base


def make_lab(root, iommu=True, devices=None, tables=("APIC", "DMAR", "DSDT", "FACP")):
    root = str(root)
    for driver in LAB_DRIVERS:
        for name in ("bind", "unbind", "new_id"):
            write(root, "sys/bus/pci/drivers/%s/%s" % (driver, name), "")
    write(root, "sys/bus/pci/drivers_probe", "")
    os.makedirs(os.path.join(root, "sys/kernel/iommu_groups"))
    for address, vendor, device, pci_class, header, driver, group in devices or LAB:
        add_device(root, address, vendor, device, pci_class, header, driver,
                   group if iommu else None)
    for table in tables:
        write(root, "sys/firmware/acpi/tables/" + table, "")
    cmdline = LAB_CMDLINE if iommu else LAB_CMDLINE.replace(" intel_iommu=on", "")
    write(root, "proc/cmdline", cmdline)
    write(root, "proc/cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: fpu svm\n")
    write(root, "proc/self/mountinfo", LAB_MOUNTINFO)
    write(root, "proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
    write(root, "proc/net/route", LAB_ROUTE)
    write(root, "proc/net/ipv6_route", LAB_IPV6_ROUTE)
    os.makedirs(os.path.join(root, "sys/devices/pci0000:00/0000:00:02.0/virtio0/net/eth0"))
    link(root, "sys/class/net/eth0", "sys/devices/pci0000:00/0000:00:02.0/virtio0/net/eth0")
    os.makedirs(os.path.join(root, "sys/devices/virtual/net/lo"))
    link(root, "sys/class/net/lo", "sys/devices/virtual/net/lo")
    os.makedirs(os.path.join(root, "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda"))
    link(root, "sys/dev/block/254:0", "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda")
    sr0 = "sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sr0"
    os.makedirs(os.path.join(root, sr0))
    link(root, "sys/dev/block/11:0", sr0)
    os.makedirs(os.path.join(root, "sys/devices/pnp0/00:03/tty/ttyS0"))
    link(root, "sys/devices/pnp0/00:03/tty/ttyS0/device", "sys/devices/pnp0/00:03")
    link(root, "sys/class/tty/ttyS0", "sys/devices/pnp0/00:03/tty/ttyS0")
    write(root, "sys/class/tty/console/active", "ttyS0\n")
    os.makedirs(os.path.join(root, "etc/udev/rules.d"))
    os.makedirs(os.path.join(root, "dev/vfio"))
    return root


def snapshot(root):
    """Every path, link target and file content under root: 'host left unchanged' checks."""
    seen = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                seen[path] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    seen[path] = handle.read()
            else:
                seen[path] = "dir"
    return seen


@pytest.fixture
def lab(tmp_path):
    return FakeKernel(make_lab(tmp_path))


TOOLS = core.Tools(modprobe="modprobe", udevadm="udevadm")
EDU = "0000:00:03.0"


def bind(kernel, devices, **kwargs):
    planned = core.plan(kernel, devices, **kwargs)
    warnings = list(planned.warnings)
    if planned.changed:
        warnings += core.apply(kernel, kernel.run, planned, TOOLS)
    return planned, core.report(kernel, planned, applied=True), warnings


# ---------------------------------------------------------------- selecting devices

@pytest.mark.parametrize("text, expected", [
    ("0000:00:03.0", ("address", "0000:00:03.0")),
    (" 0000:65:00.1 ", ("address", "0000:65:00.1")),
    ("0000:0A:1F.7", ("address", "0000:0a:1f.7")),
    ("1234:11E8", ("id", "1234:11e8")),
])
def test_selectors_are_validated_and_normalised(text, expected):
    assert core.parse_selector(text) == expected


@pytest.mark.parametrize("text, hint", [
    ("00:03.0", "add the PCI domain: 0000:00:03.0"),
    ("0000:00:20.0", "DDDD:BB:DD.F"),
    ("0000:00:03.8", "DDDD:BB:DD.F"),
    ("1234-11e8", "VVVV:DDDD"),
    ("eth0", "lspci -D"),
])
def test_bad_selectors_say_what_is_valid(text, hint):
    with pytest.raises(core.VfioError) as caught:
        core.parse_selector(text)
    assert hint in str(caught.value) and repr(text) in str(caught.value)


def test_select_by_address_and_id_each_device_once(lab):
    assert core.select(lab, ["1af4:1000", "0000:00:02.0", "1234:11e8"]) == ["0000:00:02.0", EDU]
    assert core.select(lab, ["1af4:1001"]) == ["0000:00:04.0"]


def test_missing_devices_are_named(lab):
    with pytest.raises(core.VfioError, match=r"no PCI device 0000:00:09\.0 on this host; "
                                             r"present: 0000:00:00\.0, "):
        core.select(lab, ["0000:00:09.0"])
    with pytest.raises(core.VfioError, match="no PCI device with vendor:device id 10de:1eb8"):
        core.select(lab, ["10de:1eb8"])
    with pytest.raises(core.VfioError, match="devices is empty"):
        core.select(lab, [])


def test_device_reads_the_lab_layout(lab):
    edu = core.Device(lab, EDU)
    assert (edu.pci_id, edu.pci_class, edu.driver, edu.override, edu.group, edu.bridge) == (
        "1234:11e8", "0x00ff00", None, None, 3, False)
    isa = core.Device(lab, "0000:00:1f.0")
    assert isa.driver == "lpc_ich" and isa.group == 5 and isa.bridge  # class 06, header type 0
    assert not core.Device(lab, "0000:00:1f.2").bridge  # header 0x80: multi-function, type 0
    assert core.Device(lab, "0000:00:01.0").boot_vga


# ---------------------------------------------------------------- what the host needs

def test_host_needs_root_disk_default_route_and_display_in_the_lab(lab):
    needs = core.host_needs(lab)
    assert needs == {
        "0000:00:04.0": ["holds the mounted filesystem /"],
        "0000:00:02.0": ["carries the default route (eth0)"],
        "0000:00:01.0": ["is the primary display (boot_vga)"],
    }


def test_ipv6_unreachable_default_on_lo_is_no_route(lab):
    assert core.default_route_interfaces(lab) == ["eth0"]
    write(lab.root, "proc/net/route", LAB_ROUTE.splitlines()[0] + "\n")
    assert core.default_route_interfaces(lab) == ["eth0"]  # the IPv6 default alone
    write(lab.root, "proc/net/ipv6_route", LAB_IPV6_ROUTE.splitlines()[2] + "\n")
    assert core.default_route_interfaces(lab) == []
    # ip route add unreachable default / ip -6 route add prohibit default: up, but rejecting
    write(lab.root, "proc/net/route", LAB_ROUTE.splitlines()[0] + "\n"
          "*\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0\n")
    write(lab.root, "proc/net/ipv6_route", LAB_IPV6_ROUTE.splitlines()[2].replace(
        "00200200", "00200201") + "\n")
    assert core.default_route_interfaces(lab) == []


def test_host_needs_follow_bridges_bonds_lvm_swap_and_consoles(tmp_path):
    nic_a, nic_b, nvme, gpu, serial = ("0000:3b:00.0", "0000:3b:00.1", "0000:5e:00.0",
                                       "0000:65:00.0", "0000:00:16.3")
    devices = [(nic_a, "8086", "1572", "0x020000", 0x80, "i40e", 30),
               (nic_b, "8086", "1572", "0x020000", 0x80, "i40e", 30),
               (nvme, "144d", "a808", "0x010802", 0x00, "nvme", 31),
               (gpu, "10de", "1eb8", "0x030200", 0x00, "nvidia", 32),
               (serial, "8086", "a13d", "0x070002", 0x00, "serial", 33)]
    root = make_lab(tmp_path, devices=devices)
    host = core.Host(root)
    write(root, "proc/self/mountinfo",
          "26 1 253:0 / / rw - xfs /dev/mapper/vg-root rw\n"
          "27 26 259:2 / /boot rw - ext4 /dev/nvme0n1p2 rw\n"
          "28 26 0:40 / /srv rw - btrfs /dev/nvme0n1p3 rw\n"
          "29 26 9:1 / /var/lib\\040images rw - ext4 /dev/md0p1 rw\n")
    write(root, "proc/swaps", "Filename Type Size Used Priority\n/dev/dm-1 partition 1 0 -2\n")
    disk = "sys/devices/pci0000:5d/0000:5d:00.0/%s/nvme/nvme0/nvme0n1" % nvme
    for part in ("nvme0n1p2", "nvme0n1p3", "nvme0n1p4"):
        os.makedirs(os.path.join(root, disk, part))
        link(root, "sys/class/block/" + part, disk + "/" + part)
    link(root, "sys/dev/block/259:2", disk + "/nvme0n1p2")
    for dm, part in (("dm-0", "nvme0n1p4"), ("dm-1", "nvme0n1p4")):
        os.makedirs(os.path.join(root, "sys/devices/virtual/block", dm, "slaves"))
        link(root, "sys/devices/virtual/block/%s/slaves/%s" % (dm, part), disk + "/" + part)
        link(root, "sys/class/block/" + dm, "sys/devices/virtual/block/" + dm)
    link(root, "sys/dev/block/253:0", "sys/devices/virtual/block/dm-0")
    # a partitioned md array: its members hang off the whole array, not off the partition
    os.makedirs(os.path.join(root, "sys/devices/virtual/block/md0/md0p1"))
    os.makedirs(os.path.join(root, disk, "nvme0n1p5"))
    link(root, "sys/devices/virtual/block/md0/slaves/nvme0n1p5", disk + "/nvme0n1p5")
    link(root, "sys/dev/block/9:1", "sys/devices/virtual/block/md0/md0p1")
    # default route on br0 <- bond0 <- the two i40e ports
    write(root, "proc/net/route", LAB_ROUTE.replace("eth0", "br0"))
    write(root, "proc/net/ipv6_route", "")
    for name in ("br0", "bond0"):
        os.makedirs(os.path.join(root, "sys/devices/virtual/net", name))
        link(root, "sys/class/net/" + name, "sys/devices/virtual/net/" + name)
    link(root, "sys/devices/virtual/net/br0/lower_bond0", "sys/devices/virtual/net/bond0")
    for nic, port in ((nic_a, "eno1"), (nic_b, "eno2")):
        port_dir = "sys/devices/pci0000:3a/0000:3a:00.0/%s/net/%s" % (nic, port)
        os.makedirs(os.path.join(root, port_dir))
        link(root, "sys/class/net/" + port, port_dir)
        link(root, "sys/devices/virtual/net/bond0/lower_" + port, port_dir)
    os.makedirs(os.path.join(root, "sys/devices/pci0000:00/%s/graphics/fb0" % gpu))
    link(root, "sys/class/graphics/fb0", "sys/devices/pci0000:00/%s/graphics/fb0" % gpu)
    link(root, "sys/devices/pci0000:00/%s/graphics/fb0/device" % gpu, "sys/devices/pci0000:00/" + gpu)
    tty = "sys/devices/pci0000:00/%s/tty/ttyS4" % serial
    os.makedirs(os.path.join(root, tty))
    link(root, tty + "/device", "sys/devices/pci0000:00/" + serial)
    link(root, "sys/class/tty/ttyS4", tty)
    write(root, "sys/class/tty/console/active", "tty0 ttyS4\n")

    needs = core.host_needs(host)
    assert needs[nvme] == ["holds the mounted filesystem /", "holds the mounted filesystem /boot",
                           "holds the mounted filesystem /srv",
                           "holds the mounted filesystem /var/lib images", "holds swap on /dev/dm-1"]
    assert needs["0000:5d:00.0"] == needs[nvme]  # the root port above it
    assert needs[nic_a] == needs[nic_b] == ["carries the default route (br0)"]
    assert needs[gpu] == ["drives the console framebuffer fb0"]
    assert needs[serial] == ["carries the console ttyS4"]


# ---------------------------------------------------------------- refusals

def test_refuses_the_root_disk_controller_and_changes_nothing(lab):
    before = snapshot(lab.root)
    with pytest.raises(core.VfioError) as caught:
        core.plan(lab, ["0000:00:04.0"])
    message = str(caught.value)
    assert "refusing 0000:00:04.0 (1af4:1001, driver virtio-pci)" in message
    assert "holds the mounted filesystem /" in message and "force=true" in message
    assert snapshot(lab.root) == before and lab.writes == []


def test_refuses_the_default_route_nic_and_the_display(lab):
    with pytest.raises(core.VfioError, match=r"carries the default route \(eth0\)"):
        core.plan(lab, ["1af4:1000"])
    with pytest.raises(core.VfioError, match=r"primary display \(boot_vga\)"):
        core.plan(lab, ["0000:00:01.0"])


def test_one_refused_device_stops_the_whole_request(lab):
    before = snapshot(lab.root)
    with pytest.raises(core.VfioError, match="refusing 0000:00:02.0"):
        core.plan(lab, [EDU, "0000:00:02.0"])
    assert snapshot(lab.root) == before


def test_iommu_off_names_the_missing_kernel_argument(tmp_path):
    kernel = FakeKernel(make_lab(tmp_path, iommu=False))
    before = snapshot(kernel.root)
    with pytest.raises(core.VfioError) as caught:
        core.plan(kernel, [EDU])
    message = str(caught.value)
    assert "the IOMMU is off (/sys/kernel/iommu_groups is empty)" in message
    # the lab CPU says AuthenticAMD but its IOMMU is an emulated VT-d: the DMAR table decides
    assert "Intel VT-d (ACPI DMAR table): add intel_iommu=on" in message
    assert "the running kernel has: root=/dev/vda rw" in message
    assert snapshot(kernel.root) == before


@pytest.mark.parametrize("tables, cmdline, expected", [
    (("IVRS",), "root=/dev/sda1 amd_iommu=off", "AMD-Vi (ACPI IVRS table)"),
    (("IVRS",), "root=/dev/sda1 amd_iommu=off", "remove amd_iommu=off"),
    ((), "root=/dev/sda1", "enable VT-d or AMD-Vi/IOMMU in the firmware setup"),
    (("DMAR",), "root=/dev/sda1 intel_iommu=off", "add intel_iommu=on; remove intel_iommu=off"),
])
def test_iommu_advice_by_firmware_table(tmp_path, tables, cmdline, expected):
    root = make_lab(tmp_path, iommu=False, tables=tables)
    write(root, "proc/cmdline", cmdline + "\n")
    assert expected in core.iommu_advice(core.Host(root))


def test_lab_group_of_isa_sata_and_smbus_is_not_viable(lab):
    with pytest.raises(core.VfioError) as caught:
        core.plan(lab, ["0000:00:1f.3"])
    message = str(caught.value)
    assert message.startswith("IOMMU group 5 is not viable for 0000:00:1f.3: "
                              "0000:00:1f.0 (8086:2918, driver lpc_ich), "
                              "0000:00:1f.2 (8086:2922, driver ahci) stay with the host")
    assert "0000:00:1f.3 (8086:2930, driver i801_smbus)" in message  # the group's full list
    assert "list them all in devices" in message


def behind_a_bridge(tmp_path, second_driver):
    """Two functions behind a PCIe root port, all in one group: what QEMU cannot give the lab."""
    devices = LAB + [("0000:00:05.0", "1b36", "000c", "0x060400", 0x01, "pcieport", 6)]
    root = make_lab(tmp_path, devices=devices)
    for function, driver in (("0", None), ("1", second_driver)):
        add_device(root, "0000:01:00." + function, "1234", "11e8", "0x00ff00", 0x80, driver, 6,
                   parent="pci0000:00/0000:00:05.0")
    return FakeKernel(root, native=dict(NATIVE, **{"0000:01:00.1": "e1000e"}))


def test_group_with_a_host_driver_behind_a_bridge_is_refused(tmp_path):
    kernel = behind_a_bridge(tmp_path, "e1000e")
    with pytest.raises(core.VfioError, match=r"IOMMU group 6 is not viable for 0000:01:00\.0: "
                                             r"0000:01:00\.1 \(1234:11e8, driver e1000e\) stays"):
        core.plan(kernel, ["0000:01:00.0"])


def test_group_is_viable_when_bound_together_and_the_bridge_stays(tmp_path):
    kernel = behind_a_bridge(tmp_path, "e1000e")
    planned, result, dummy = bind(kernel, ["0000:01:00.0", "0000:01:00.1"])
    assert [d["driver"] for d in result["devices"]] == ["vfio-pci", "vfio-pci"]
    members = result["devices"][0]["group_members"]
    assert members[0] == {"address": "0000:00:05.0", "id": "1b36:000c", "driver": "pcieport",
                          "bridge": True}
    assert result["devices"][1]["previous_driver"] == "e1000e"


def test_a_member_without_driver_must_be_bound_too(tmp_path):
    kernel = behind_a_bridge(tmp_path, None)
    with pytest.raises(core.VfioError, match=r"0000:01:00\.0 \(1234:11e8, driver none\) stays"):
        core.plan(kernel, ["0000:01:00.1"])


def test_bridges_are_refused_even_forced(tmp_path):
    kernel = behind_a_bridge(tmp_path, None)
    with pytest.raises(core.VfioError, match="0000:00:05.0 is a bridge"):
        core.plan(kernel, ["0000:00:05.0"], force=True)
    with pytest.raises(core.VfioError, match=r"0000:00:00\.0 is a bridge \(class 0x060000\)"):
        core.plan(kernel, ["0000:00:00.0"])  # the lab's host bridge: alone, driverless


def test_force_does_not_override_the_group_check(lab):
    with pytest.raises(core.VfioError, match="IOMMU group 5 is not viable"):
        core.plan(lab, ["0000:00:1f.2"], force=True)


# ---------------------------------------------------------------- bind, unbind, rebind

def test_check_mode_plan_predicts_and_writes_nothing(lab):
    before = snapshot(lab.root)
    planned = core.plan(lab, [EDU])
    result = core.report(lab, planned, applied=False)
    assert planned.changed and planned.load_vfio
    device = result["devices"][0]
    assert (device["driver_before"], device["driver"], device["iommu_group"]) == (None, "vfio-pci", 3)
    assert device["vfio_device"] == "/dev/vfio/3" and device["selinux_label"] is None
    assert snapshot(lab.root) == before and lab.writes == [] and lab.commands == []


def test_bind_edu_then_nothing_to_do(lab):
    planned, result, warnings = bind(lab, [EDU])
    assert warnings == []
    assert lab.commands[0] == ["modprobe", "vfio-pci"]
    assert ["udevadm", "control", "--reload"] in lab.commands
    assert lab.driver_of(EDU) == "vfio-pci" and lab.override(EDU) == "vfio-pci"
    device = result["devices"][0]
    assert device == {
        "address": EDU, "id": "1234:11e8", "class": "0x00ff00", "iommu_group": 3,
        "group_members": [{"address": EDU, "id": "1234:11e8", "driver": "vfio-pci",
                           "bridge": False}],
        "previous_driver": None, "driver_before": None, "driver": "vfio-pci",
        "persistent": True, "vfio_device": "/dev/vfio/3", "selinux_label": VFIO_LABEL,
        "changed": True,
    }
    again = core.plan(lab, ["1234:11e8"])
    assert not again.changed and not again.files
    assert core.report(lab, again, applied=False)["devices"][0]["changed"] is False


def test_persistence_rule_and_state_file(lab):
    bind(lab, [EDU])
    rules = lab.read(core.RULES_FILE)
    assert rules == core.RULES_HEADER + 'KERNEL=="0000:00:03.0", GOTO="kvmsec_vfio_bind"\n' + \
        core.RULES_FOOTER
    assert 'ATTR{driver_override}="vfio-pci", IMPORT{builtin}="kmod load vfio-pci"' in rules
    assert json.loads(lab.read(core.STATE_FILE)) == {
        "devices": {EDU: {"persistent": True, "previous_driver": None}}}
    assert oct(os.stat(lab.path(core.RULES_FILE)).st_mode & 0o777) == "0o644"


def test_not_persistent_binds_without_a_rule(lab):
    planned, result, dummy = bind(lab, [EDU], persistent=False)
    assert lab.driver_of(EDU) == "vfio-pci" and not lab.exists(core.RULES_FILE)
    assert result["devices"][0]["persistent"] is False
    planned, result, dummy = bind(lab, [EDU], persistent=True)
    assert planned.changed and lab.exists(core.RULES_FILE)
    assert [s for s, dummy in lab.writes if "drivers_probe" in s] == ["sys/bus/pci/drivers_probe"]


def test_unbind_returns_a_driverless_device_and_removes_the_rule(lab):
    bind(lab, [EDU])
    planned, result, dummy = bind(lab, [EDU], state="unbound")
    assert lab.driver_of(EDU) is None and lab.override(EDU) is None
    assert not lab.exists(core.RULES_FILE) and not lab.exists(core.STATE_FILE)
    assert result["devices"][0]["driver"] is None and result["devices"][0]["vfio_device"] is None
    assert not core.plan(lab, [EDU], state="unbound").changed


def test_rebind_after_unbind(lab):
    bind(lab, [EDU])
    bind(lab, [EDU], state="unbound")
    planned, result, dummy = bind(lab, [EDU])
    assert planned.changed and lab.driver_of(EDU) == "vfio-pci"


def test_forced_display_goes_back_to_its_remembered_driver(lab):
    planned, result, warnings = bind(lab, ["0000:00:01.0"], force=True)
    assert warnings == ["forced: 0000:00:01.0 is given to vfio-pci although it is the primary "
                        "display (boot_vga)"]
    assert result["devices"][0]["previous_driver"] == "bochs-drm"
    assert lab.driver_of("0000:00:01.0") == "vfio-pci"
    # already on vfio-pci: a second run without force has nothing to take away
    assert not core.plan(lab, ["0000:00:01.0"]).changed
    del lab.writes[:]
    planned, result, dummy = bind(lab, ["0000:00:01.0"], state="unbound")
    assert lab.driver_of("0000:00:01.0") == "bochs-drm"
    assert result["devices"][0]["driver"] == "bochs-drm"
    assert [w for w in lab.writes if w[0].endswith(("bind", "probe"))] == [
        ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:00:01.0"),
        ("sys/bus/pci/drivers/bochs-drm/bind", "0000:00:01.0")]


def test_unbind_without_memory_uses_the_default_probe(lab):
    # bound by hand before this module knew it: no previous driver on record
    lab.write("sys/bus/pci/devices/0000:00:01.0/driver_override", "vfio-pci")
    lab.load(core.VFIO)
    lab.write("sys/bus/pci/devices/0000:00:01.0/driver/unbind", "0000:00:01.0")
    lab.write("sys/bus/pci/drivers_probe", "0000:00:01.0")
    assert lab.driver_of("0000:00:01.0") == "vfio-pci"
    planned = core.plan(lab, ["0000:00:01.0"], state="unbound")
    assert "driver=(kernel's default probe)" in core.diff(planned)[0]["after"]
    core.apply(lab, lab.run, planned, TOOLS)
    assert lab.driver_of("0000:00:01.0") == "bochs-drm"
    assert ["modprobe", "-q", "-b", "pci:v00001234d00001111"] in lab.commands


def test_diff_shows_drivers_and_the_rule_file(lab):
    planned = core.plan(lab, [EDU])
    drivers, rules = core.diff(planned)
    assert drivers["before"] == ("0000:00:03.0 1234:11e8: driver=none driver_override=none "
                                 "at_boot=host\n")
    assert drivers["after"] == ("0000:00:03.0 1234:11e8: driver=vfio-pci driver_override=vfio-pci "
                                "at_boot=vfio-pci\n")
    assert rules["before_header"] == "/etc/udev/rules.d/61-kvmsec-vfio-pci.rules"
    assert rules["before"] == "" and 'KERNEL=="0000:00:03.0"' in rules["after"]


def test_partial_failure_puts_everything_back(tmp_path):
    kernel = behind_a_bridge(tmp_path, "e1000e")
    kernel.refuse.add("0000:01:00.1")
    before = snapshot(kernel.root)
    planned = core.plan(kernel, ["0000:01:00.0", "0000:01:00.1"])
    with pytest.raises(core.VfioError) as caught:
        core.apply(kernel, kernel.run, planned, TOOLS)
    message = str(caught.value)
    assert "0000:01:00.1: writing '0000:01:00.1' to /sys/bus/pci/drivers_probe failed" in message
    assert "Everything already changed was put back." in message
    assert kernel.driver_of("0000:01:00.0") is None
    assert kernel.driver_of("0000:01:00.1") == "e1000e"
    assert kernel.override("0000:01:00.0") is None and kernel.override("0000:01:00.1") is None
    after = snapshot(kernel.root)
    loaded = [p for p in after if "/drivers/vfio-pci" in p]  # modprobe is not undone
    assert dict((p, v) for p, v in after.items() if p not in loaded) == before


def test_a_file_that_cannot_be_written_puts_the_drivers_and_the_other_file_back(lab):
    write(lab.root, "var/lib/kvmsec", "a file where the state directory goes\n")
    before = snapshot(lab.root)
    planned = core.plan(lab, [EDU])
    with pytest.raises(core.VfioError) as caught:
        core.apply(lab, lab.run, planned, TOOLS)
    assert "Everything already changed was put back." in str(caught.value)
    assert lab.driver_of(EDU) is None and lab.override(EDU) is None
    assert not lab.exists(core.RULES_FILE)  # written first, then taken away again
    after = snapshot(lab.root)
    assert dict((p, v) for p, v in after.items() if "/drivers/vfio-pci" not in p) == \
        dict((p, v) for p, v in before.items() if "/drivers/vfio-pci" not in p)


def test_a_device_that_does_not_bind_is_reported(lab):
    lab.refuse.add(EDU)
    with pytest.raises(core.VfioError, match="put back"):
        bind(lab, [EDU])
    assert lab.override(EDU) is None and not lab.exists(core.RULES_FILE)


def test_unbound_device_taken_back_by_vfio_ids_is_an_error(lab):
    bind(lab, [EDU])
    lab.native[EDU] = core.VFIO  # as if modprobe.d said: options vfio-pci ids=1234:11e8
    with pytest.raises(core.VfioError, match="went back to vfio-pci: .*ids="):
        bind(lab, [EDU], state="unbound")
    assert lab.driver_of(EDU) == "vfio-pci" and lab.exists(core.RULES_FILE)


def test_state_file_that_is_not_ours_is_refused(lab):
    write(lab.root, core.STATE_FILE, "not json")
    with pytest.raises(core.VfioError, match="is not the JSON this module writes"):
        core.plan(lab, [EDU])


def test_without_udevadm_the_rule_waits_for_boot(lab):
    planned = core.plan(lab, [EDU])
    warnings = core.apply(lab, lab.run, planned, core.Tools(modprobe="modprobe"))
    assert warnings == ["udevadm not found: the udev rules take effect at the next boot"]


def test_sysfs_writes_do_not_create_files(tmp_path):
    host = core.Host(str(tmp_path))
    with pytest.raises(OSError):
        host.write("sys/bus/pci/drivers_probe", "0000:00:03.0")
    assert not os.path.exists(os.path.join(str(tmp_path), "sys/bus/pci/drivers_probe"))


@pytest.mark.parametrize("pci_class, header, driver, safe", [
    ("0x060400", 0x01, "pcieport", True),    # PCIe root port: driver_managed_dma
    ("0x060400", 0x01, None, True),          # bridge without driver
    ("0x060000", 0x00, None, True),          # host bridge sharing the group
    ("0x060100", 0x80, "lpc_ich", False),    # ISA bridge a host driver holds: the kernel refuses
    ("0x020000", 0x00, "pci-stub", True),
    ("0x020000", 0x00, "vfio-pci", True),
    ("0x020000", 0x00, None, False),         # driverless endpoint: a host driver may claim it
    ("0x020000", 0x00, "e1000e", False),
])
def test_which_group_members_keep_the_group_viable(tmp_path, pci_class, header, driver, safe):
    root = str(tmp_path)
    if driver:
        write(root, "sys/bus/pci/drivers/%s/bind" % driver, "")
    add_device(root, "0000:02:00.0", "8086", "1234", pci_class, header, driver, 7)
    assert core.member_is_safe(core.Device(core.Host(root), "0000:02:00.0")) is safe


def test_decide_predicts_in_check_mode_and_returns_the_devices_as_they_are_after(lab):
    predicted, _warnings = returned(lambda: core.decide(lab, lab.run, TOOLS, [EDU]), check_mode=True)
    assert predicted["changed"] and lab.driver_of(EDU) != "vfio-pci" and not lab.exists(core.RULES_FILE)
    assert predicted["devices"][0]["driver"] == "vfio-pci"
    done, _warnings = returned(lambda: core.decide(lab, lab.run, TOOLS, [EDU]))
    assert done["changed"] and lab.driver_of(EDU) == "vfio-pci" and lab.exists(core.RULES_FILE)
    assert done["devices"][0]["vfio_device"] == "/dev/vfio/3"
    again, _warnings = returned(lambda: core.decide(lab, lab.run, TOOLS, [EDU]))
    assert not again["changed"]
