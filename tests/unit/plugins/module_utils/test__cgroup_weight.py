"""Unit tests of the cgroup_weight core, without Ansible.

The development machine's cgroup v2 mount has no io or cpu controller and its disks do not use
BFQ, so cgroup v2 and BFQ hosts are built as directory trees in tmp_path (the core takes its
/proc, /sys and mount table as parameters). libvirt domains are small fakes with the same
methods as virDomain: the unit tier runs without a libvirt daemon; the integration tier uses
the real one.
"""

import os
import stat

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _cgroup_weight as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import LibvirtError
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils import fake_libvirt
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned


# ---------------------------------------------------------------- scale and formats

@pytest.mark.parametrize("weight_file, scale, host, valid", [
    (core.IO_V1_BFQ, 1000, 1000, (1, 1000)),
    (core.IO_V1_CFQ, 100, 100, (10, 1000)),
    (core.IO_V2_BFQ, 10, 10, (1, 1000)),
    (core.IO_V2, 10000, 10000, (1, 10000)),
    (core.CPU_V1, 100, 1024, (1, 10000)),
    (core.CPU_V1, 1000, 10240, (1, 10000)),
    (core.CPU_V1, 1, 10, (1, 10000)),
    (core.CPU_V2, 100, 100, (1, 10000)),
])
def test_scale_maps_onto_each_host_file(weight_file, scale, host, valid):
    assert weight_file.to_host(scale) == host
    assert weight_file.scale_range() == valid


def test_out_of_range_names_the_file_and_the_hosts_range():
    with pytest.raises(core.CgroupWeightError) as caught:
        core.IO_V1_CFQ.checked(5, "db1", "io_weight")
    message = str(caught.value)
    assert "guest db1: io_weight 5 is out of range on this host" in message
    assert "blkio.weight (cgroup v1)" in message and "10-1000" in message


@pytest.mark.parametrize("text, expected", [
    ("100\n", (100, {})),
    ("default 100\n", (100, {})),
    ("default 250\n8:0 500\n254:16 40\n", (250, {"8:0": 500, "254:16": 40})),
    ("", (None, {})),
])
def test_parse_weights(text, expected):
    assert core.parse_weights(text) == expected


def test_parse_throttles_v1_and_v2():
    assert core.parse_v1_throttle("254:0 1048576\n8:0 20\n") == {"254:0": 1048576, "8:0": 20}
    text = "254:0 rbps=1048576 wbps=max riops=max wiops=200\n8:0 rbps=max wbps=max riops=max wiops=max\n"
    assert core.parse_io_max(text) == {"254:0": {"read_bytes_sec": 1048576, "write_iops_sec": 200},
                                       "8:0": {}}


HYBRID_MOUNTS = """cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup /sys/fs/cgroup/cpu\\040acct cgroup rw,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_parse_mounts():
    v1, v2 = core.parse_mounts(HYBRID_MOUNTS)
    assert v1["blkio"] == "/sys/fs/cgroup/blkio" and v1["cpu"] == "/sys/fs/cgroup/cpu"
    assert v1["cpuacct"] == "/sys/fs/cgroup/cpu acct"
    assert v2 == "/sys/fs/cgroup/unified"


@pytest.mark.parametrize("argv, name", [
    (["/usr/bin/qemu-system-x86_64", "-name", "low_prio", "-S"], "low_prio"),
    (["qemu-system-x86_64", "-name", "guest=db1,debug-threads=on"], "db1"),
    (["qemu-kvm", "-name", "web,process=qemu:web"], "web"),
    (["/usr/bin/python3", "-name", "low_prio"], None),
    (["qemu-system-x86_64", "-m", "64"], None),
    ([""], None),
])
def test_qemu_name(argv, name):
    assert core.qemu_name(argv) == name


# ---------------------------------------------------------------- a fake host

def block_stat(major, minor):
    mode = stat.S_IFBLK | 0o600
    return os.stat_result((mode, 0, 0, 0, 0, 0, 0, 0, 0, 0), {"st_rdev": os.makedev(major, minor)})


class FakeHost(object):
    """A cgroup v2 (or v1) host under tmp_path: mounts, /proc, /sys and libvirt's pid files."""

    def __init__(self, tmp_path, version=2, controllers="cpu io memory", scheduler="mq-deadline [bfq] none"):
        self.root = tmp_path
        self.cgroup = tmp_path / "cgroup"
        self.proc = tmp_path / "proc"
        self.sys = tmp_path / "sys"
        self.pids = tmp_path / "run"
        self.systemd = tmp_path / "systemd"  # created by tests of a systemd-booted host
        for path in (self.cgroup, self.proc, self.pids, self.sys / "block" / "sda" / "queue",
                     self.sys / "dev" / "block" / "8:0" / "queue",
                     self.sys / "dev" / "block" / "8:1"):
            path.mkdir(parents=True, exist_ok=True)
        (self.sys / "block" / "sda" / "queue" / "scheduler").write_text(scheduler + "\n")
        (self.sys / "dev" / "block" / "8:0" / "queue" / "scheduler").write_text(scheduler + "\n")
        (self.sys / "dev" / "block" / "8:1" / "partition").write_text("1\n")
        if version == 2:
            self.mounts = "cgroup2 %s cgroup2 rw 0 0\n" % self.cgroup
            (self.cgroup / "cgroup.controllers").write_text(controllers + "\n")
            (self.cgroup / "cgroup.subtree_control").write_text(controllers + "\n")
        else:
            self.mounts = "".join("cgroup %s/%s cgroup rw,%s 0 0\n" % (self.cgroup, name, name)
                                  for name in ("blkio", "cpu"))
            for name in ("blkio", "cpu"):
                (self.cgroup / name).mkdir()

    def host(self, version="auto"):
        devices = {"/dev/sda": block_stat(8, 0), "/dev/sda1": block_stat(8, 1)}

        def dev_stat(path):
            if path in devices:
                return devices[path]
            return os.stat(path)

        return core.Host(self.mounts, sys_root=str(self.sys), proc_root=str(self.proc),
                         dev_stat=dev_stat, version=version, libvirt_pid_dir=str(self.pids),
                         systemd_dir=str(self.systemd))

    def process(self, pid, argv, cgroup_line="0::/"):
        directory = self.proc / str(pid)
        directory.mkdir()
        (directory / "cmdline").write_bytes(("\0".join(argv) + "\0").encode())
        (directory / "cgroup").write_text(cgroup_line + "\n")


@pytest.fixture
def v2(tmp_path):
    fake = FakeHost(tmp_path)
    fake.process(4242, ["qemu-system-x86_64", "-name", "low_prio", "-S"])
    fake.process(1, ["/sbin/init"])
    return fake


def process_guest(**values):
    guest = {"name": "low_prio", "target": "process", "cgroup": "kvmsec/low_prio", "pid": None,
             "io_weight": None, "cpu_weight": None, "devices": []}
    guest.update(values)
    return guest


def run_once(host, guests, check_mode=False):
    targets = core.build_targets(guests, host, "both", conn=None)
    planned = core.plan(targets)
    if not check_mode:
        core.apply(planned)
    return core.report(planned)


# ---------------------------------------------------------------- process guests on cgroup v2

def test_v2_process_guest_plan_apply_idempotent(v2):
    guest = process_guest(io_weight=1000, cpu_weight=50,
                          devices=[{"path": "/dev/sda", "weight": 300, "read_bytes_sec": 1000,
                                    "write_iops_sec": None, "read_iops_sec": None,
                                    "write_bytes_sec": None}])
    changed, _guests, diff = run_once(v2.host(), [guest], check_mode=True)
    assert changed and not (v2.cgroup / "kvmsec").exists()
    assert diff["after"]["low_prio"]["live io_weight"] == 1000

    # a parent that exists already, as the kernel shows it: offered io and cpu, delegating none
    (v2.cgroup / "kvmsec").mkdir()
    (v2.cgroup / "kvmsec" / "cgroup.controllers").write_text("cpu io\n")
    (v2.cgroup / "kvmsec" / "cgroup.subtree_control").write_text("\n")
    targets = core.build_targets([guest], v2.host(), "both", conn=None)
    planned = core.plan(targets)
    core.apply(planned)
    changed, results, _diff = core.report(planned)
    leaf = v2.cgroup / "kvmsec" / "low_prio"
    assert changed
    assert targets[0].enabled == [(str(v2.cgroup / "kvmsec"), "io"), (str(v2.cgroup / "kvmsec"), "cpu")]
    assert (leaf / "cgroup.procs").read_text() == "4242\n"
    assert (leaf / "io.bfq.weight").read_text() in ("1000\n", "8:0 300\n")
    assert (leaf / "cpu.weight").read_text() == "50\n"
    assert (leaf / "io.max").read_text() == "8:0 rbps=1000\n"
    wheres = dict((s["key"], s["where"]) for s in results[0]["settings"])
    assert wheres["io_weight"] == str(leaf / "io.bfq.weight")

    # what the kernel would now show, then a second run finds nothing to do
    (leaf / "io.bfq.weight").write_text("default 1000\n8:0 300\n")
    (leaf / "io.max").write_text("8:0 rbps=1000 wbps=max riops=max wiops=max\n")
    (v2.proc / "4242" / "cgroup").write_text("0::/kvmsec/low_prio\n")
    changed, _results, _diff = run_once(v2.host(), [guest])
    assert not changed


def test_v2_without_delegation_at_the_root_refuses(v2):
    (v2.cgroup / "cgroup.subtree_control").write_text("memory\n")
    with pytest.raises(core.CgroupWeightError, match="not enabled for child cgroups"):
        run_once(v2.host(), [process_guest(io_weight=10)])
    assert not (v2.cgroup / "kvmsec").exists()


def test_controller_missing_says_where_it_is(tmp_path):
    fake = FakeHost(tmp_path, controllers="memory pids")
    with pytest.raises(core.CgroupWeightError) as caught:
        fake.host().locate("io")
    assert "io controller is not available" in str(caught.value)
    assert "enables: memory, pids" in str(caught.value)
    assert "no cgroup v1 blkio hierarchy is mounted" in str(caught.value)


def test_forced_version_names_the_other_hierarchy(tmp_path):
    fake = FakeHost(tmp_path, version=1)
    with pytest.raises(core.CgroupWeightError) as caught:
        fake.host(version="2").locate("cpu")
    assert "in cgroup v2" in str(caught.value) and "bound to the cgroup v1 hierarchy" in str(caught.value)
    assert fake.host().locate("cpu") == (1, str(fake.cgroup / "cpu"))


def test_v1_io_file_follows_bfq_and_cfq(tmp_path):
    assert FakeHost(tmp_path / "a", version=1).host().io_file(1) is core.IO_V1_BFQ
    cfq = FakeHost(tmp_path / "b", version=1, scheduler="noop deadline [cfq]")
    assert cfq.host().io_file(1) is core.IO_V1_CFQ
    existing = cfq.cgroup / "blkio" / "machine"
    existing.mkdir()
    (existing / "blkio.bfq.weight").write_text("100\n")
    assert cfq.host().io_file(1, str(existing)) is core.IO_V1_BFQ


def test_v1_without_bfq_or_cfq_refuses_io_weights_and_still_throttles(tmp_path):
    # a kernel built without BFQ (CONFIG_IOSCHED_BFQ) has no v1 I/O weight file at all; CFQ went in 5.0
    fake = FakeHost(tmp_path, version=1, scheduler="none [mq-deadline] kyber")
    with pytest.raises(core.CgroupWeightError) as caught:
        fake.host().io_file(1)
    assert "cgroup v1 cannot weigh I/O on this host" in str(caught.value)
    assert "(kyber, mq-deadline, none)" in str(caught.value) and "modprobe bfq" in str(caught.value)
    assert fake.host().io_file(2) is core.IO_V2


@pytest.mark.parametrize("path, message", [
    ("/dev/cgw-none", "unknown device /dev/cgw-none: no such file"),
    ("/dev/null", "not a block device"),
    ("/dev/sda1", "is a partition"),
])
def test_devices_are_whole_disks(v2, path, message):
    with pytest.raises(core.CgroupWeightError, match=message) as caught:
        v2.host().device(path)
    assert "/dev/sda" in str(caught.value)


def test_per_device_bfq_weight_needs_the_bfq_scheduler(tmp_path):
    fake = FakeHost(tmp_path, scheduler="[mq-deadline] bfq none")
    fake.process(4242, ["qemu-system-x86_64", "-name", "low_prio"])
    device = {"path": "/dev/sda", "weight": 50}
    with pytest.raises(core.CgroupWeightError, match="needs the bfq scheduler.*uses mq-deadline"):
        run_once(fake.host(), [process_guest(devices=[device])])


def test_unknown_or_ambiguous_or_libvirt_process(v2):
    with pytest.raises(core.CgroupWeightError, match=r"known guests: low_prio \(pid 4242\)"):
        core.ProcessTarget(process_guest(name="nope"), v2.host())
    v2.process(4343, ["qemu-system-x86_64", "-name", "low_prio"])
    with pytest.raises(core.CgroupWeightError, match="ambiguous.*4242, 4343"):
        core.ProcessTarget(process_guest(), v2.host())
    assert core.ProcessTarget(process_guest(pid=4343), v2.host()).pid == 4343
    (v2.pids / "low_prio.pid").write_text("4343")
    with pytest.raises(core.CgroupWeightError, match="managed by libvirt"):
        core.ProcessTarget(process_guest(pid=4343), v2.host())


@pytest.mark.parametrize("cgroup", ["../escape", "/", "a/../../b"])
def test_cgroup_must_stay_inside_the_hierarchy(v2, cgroup):
    with pytest.raises(core.CgroupWeightError, match="not a relative cgroup path"):
        core.ProcessTarget(process_guest(cgroup=cgroup), v2.host())


@pytest.mark.parametrize("values, message", [
    ({"io_weight": 0}, "outside the weight scale 1-10000"),
    ({"cpu_weight": 10001}, "outside the weight scale 1-10000"),
    ({"devices": [{"path": "/dev/sda", "read_bytes_sec": -1}]}, "must be 0"),
])
def test_scale_and_throttle_checks_need_no_host(values, message):
    with pytest.raises(core.CgroupWeightError, match=message):
        core.validate_entry(process_guest(**values))


def test_notes_when_no_disk_uses_bfq(tmp_path):
    fake = FakeHost(tmp_path, scheduler="[mq-deadline] bfq none")
    fake.process(4242, ["qemu-system-x86_64", "-name", "low_prio"])
    host = fake.host()
    planned = core.plan(core.build_targets([process_guest(io_weight=10)], host, "both", None))
    assert "no block device on this host uses the bfq scheduler" in core.notes(host, planned)[0]


def test_notes_when_iocost_enforces_io_weight_on_no_disk(tmp_path):
    fake = FakeHost(tmp_path, scheduler="[none] mq-deadline")
    fake.process(4242, ["qemu-system-x86_64", "-name", "low_prio"])
    host = fake.host()
    planned = core.plan(core.build_targets([process_guest(io_weight=10)], host, "both", None))
    assert "io.cost.qos enables it on no block device" in " ".join(core.notes(host, planned))
    (fake.cgroup / "io.cost.qos").write_text("8:0 enable=1 ctrl=auto rpct=0.00 rlat=250000\n")
    assert core.notes(host, planned) == []


# ---------------------------------------------------------------- libvirt domains (the one fake libvirt)

def domain_handle(name, active=True, persistent=True):
    return fake_libvirt.FakeDomain(name, active=active, persistent=persistent)


def domain_guest(name, **values):
    guest = {"name": name, "target": "domain", "io_weight": None, "cpu_weight": None,
             "devices": []}
    guest.update(values)
    return guest


def build(fake, conn, guests, scope="both"):
    return core.build_targets(guests, fake.host(), scope, conn)


def test_domain_both_scopes_mapped_to_cpu_shares_on_v1(tmp_path):
    fake = FakeHost(tmp_path, version=1)
    dom = domain_handle("db1")
    wanted = [domain_guest("db1", io_weight=1000, cpu_weight=1000)]
    core.apply(core.plan(build(fake, fake_libvirt.connection(dom), wanted)))
    assert ("blkio", 2, {"weight": 1000}) in dom.calls and ("blkio", 1, {"weight": 1000}) in dom.calls
    assert ("sched", 1, {"cpu_shares": 10240}) in dom.calls
    changed, _guests, _diff = core.report(core.plan(build(fake, fake_libvirt.connection(dom), wanted)))
    assert not changed


def test_domain_live_weights_land_on_the_systemd_machine_scope_on_v2(tmp_path):
    # The layout libvirt 9 and systemd 252 build in the lab (Debian 12, cgroup v2): the QEMU
    # main thread sits in SCOPE/libvirt/emulator, and SCOPE/libvirt has no io controller.
    # Device values libvirt writes itself, into SCOPE/libvirt; weights go through systemd.
    fake = FakeHost(tmp_path, scheduler="[none] mq-deadline")
    fake.systemd.mkdir()
    scope = fake.cgroup / "machine.slice" / "machine-qemu\\x2d1\\x2ddb1.scope"
    (scope / "libvirt" / "emulator").mkdir(parents=True)
    for name, text in (("io.weight", "default 100\n"), ("cpu.weight", "100\n")):
        (scope / name).write_text(text)
    (scope / "libvirt" / "cpu.weight").write_text("100\n")
    fake.process(777, ["/usr/bin/qemu-system-x86_64", "-name", "guest=db1"],
                 "0::/machine.slice/machine-qemu\\x2d1\\x2ddb1.scope/libvirt/emulator")
    (fake.pids / "db1.pid").write_text("777")
    dom = domain_handle("db1")
    wanted = domain_guest("db1", io_weight=1000, cpu_weight=10,
                          devices=[{"path": "/dev/sda", "write_bytes_sec": 1048576}])
    planned = core.plan(build(fake, fake_libvirt.connection(dom), [wanted]))
    live = dict((s.key, s.where) for _t, settings in planned for s in settings if s.scope == "live")
    assert live == {"io_weight": str(scope / "io.weight"), "cpu_weight": str(scope / "cpu.weight"),
                    "write_bytes_sec[/dev/sda]": str(scope / "libvirt" / "io.max")}
    core.apply(planned)
    assert ("sched", 1, {"cpu_shares": 10}) in dom.calls
    assert ("blkio", 1, {"weight": 1000, "device_write_bytes_sec": "/dev/sda,1048576"}) in dom.calls


@pytest.mark.parametrize("active", [True, False])
def test_domain_per_device_weight_refused_on_v2_with_systemd(tmp_path, active):
    # libvirt 9.0 aborts handing IODeviceWeight to systemd, seen in the lab: refuse it for
    # running guests and for definitions alike, before anything is written.
    fake = FakeHost(tmp_path, scheduler="[none] mq-deadline")
    fake.systemd.mkdir()
    dom = domain_handle("db1", active=active)
    wanted = [domain_guest("db1", io_weight=500, devices=[{"path": "/dev/sda", "weight": 300}])]
    with pytest.raises(core.CgroupWeightError, match="per-device weight for /dev/sda is refused"
                                                     ".*libvirt 9.0 aborts.*use io_weight"):
        core.plan(build(fake, fake_libvirt.connection(dom), wanted))
    assert dom.calls == []


# throttles need no weight file: they work on a kernel without BFQ too, where v1 has none
@pytest.mark.parametrize("scheduler", ["mq-deadline [bfq] none", "none [mq-deadline] kyber"])
def test_domain_device_throttle_matches_the_same_disk_by_number(tmp_path, scheduler):
    fake = FakeHost(tmp_path, version=1, scheduler=scheduler)
    dom = domain_handle("db1", active=False)
    dom.blkio[2]["device_read_bytes_sec"] = "/dev/sda,500"
    device = {"path": "/dev/sda", "read_bytes_sec": 500}
    planned = core.plan(build(fake, fake_libvirt.connection(dom), [domain_guest("db1", devices=[device])]))
    assert [s.scope for _t, settings in planned for s in settings] == ["config"]
    assert not core.report(planned)[0]
    device["read_bytes_sec"] = 900
    core.apply(core.plan(build(fake, fake_libvirt.connection(dom), [domain_guest("db1", devices=[device])])))
    assert dom.calls == [("blkio", 2, {"device_read_bytes_sec": "/dev/sda,900"})]


def test_domain_per_device_weight_refused_on_v1_bfq(tmp_path):
    fake = FakeHost(tmp_path, version=1)
    dom = domain_handle("db1")
    guest = domain_guest("db1", devices=[{"path": "/dev/sda", "weight": 200}])
    with pytest.raises(core.CgroupWeightError, match="libvirt writes per-device weights"):
        core.plan(build(fake, fake_libvirt.connection(dom), [guest]))


def test_domain_unknown_scope_and_duplicates(tmp_path):
    fake = FakeHost(tmp_path, version=1)
    conn = fake_libvirt.connection(domain_handle("db1"), domain_handle("web", active=False),
                                   domain_handle("tmp", persistent=False))
    with pytest.raises(LibvirtError, match=r"guests\[\]\.name: no libvirt domain nope on this host \(give a "
                                           r"name or UUID\); its domains: db1, tmp, web"):
        build(fake, conn, [domain_guest("nope", io_weight=10)])
    with pytest.raises(core.CgroupWeightError, match="web is not running"):
        build(fake, conn, [domain_guest("web", io_weight=10)], scope="live")
    with pytest.raises(core.CgroupWeightError, match="tmp is transient"):
        build(fake, conn, [domain_guest("tmp", io_weight=10)], scope="config")
    with pytest.raises(core.CgroupWeightError, match="more than once: db1"):
        build(fake, conn, [domain_guest("db1", io_weight=10), domain_guest("db1", cpu_weight=5)])


def test_failure_restores_what_was_written(tmp_path):
    fake = FakeHost(tmp_path, version=1)
    first, second = domain_handle("db1"), domain_handle("db2")
    second.fail_on = "blkio"
    planned = core.plan(build(fake, fake_libvirt.connection(first, second),
                              [domain_guest("db1", io_weight=800), domain_guest("db2", io_weight=800)]))
    with pytest.raises(fake_libvirt.libvirtError):
        core.apply(planned)
    assert first.blkio[1]["weight"] == 100 and first.blkio[2]["weight"] == 0
    assert first.calls[-1] == ("blkio", 1, {"weight": 100})


def test_decide_predicts_in_check_mode_and_the_run_sets_what_it_predicted(tmp_path):
    fake = FakeHost(tmp_path, version=1)
    dom = domain_handle("db1")
    conn = fake_libvirt.connection(dom)
    wanted = [domain_guest("db1", io_weight=1000, cpu_weight=1000)]
    predicted, _warnings = returned(lambda: core.decide(wanted, fake.host(), "both", conn), check_mode=True)
    assert predicted["changed"] and dom.calls == []
    done, _warnings = returned(lambda: core.decide(wanted, fake.host(), "both", conn))
    assert done["guests"] == predicted["guests"] and ("blkio", 1, {"weight": 1000}) in dom.calls
    again, _warnings = returned(lambda: core.decide(wanted, fake.host(), "both", conn))
    assert not again["changed"]
