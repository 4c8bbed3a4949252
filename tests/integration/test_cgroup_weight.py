"""cgroup_weight against real cgroups, a real libvirtd with TCG guests and a real QEMU process.

Every test runs the module through Ansible (``ansible localhost -m ...``) and reads the effect
back from cgroupfs, /proc and the domain XML. The development machine has cgroup v1 io and cpu
controllers and a cgroup v2 mount without them; the lab VM's Molecule verify runs the same
checks on cgroup v2. cgroup v1 weighs I/O only through BFQ (``blkio.bfq.weight``): on a machine
whose kernel offers no BFQ scheduler the I/O weights of these tests cannot exist, so there the
tests weigh CPU alone and test_io_weight_is_refused_where_the_kernel_cannot_weigh_io proves the
refusal instead (BFQ below).
"""

import json
import os
import re
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ansible_jobs import VENV_PYTHON, run_module, tcg_guest_xml

from ansible_collections.kvmsec.hardening.plugins.module_utils._cgroup_weight import (
    qemu_processes,
)

ROOT = Path(__file__).resolve().parents[2]
# unique per run, so guests and cgroups of other helpers or parallel runs never collide
PREFIX = "cgwt%s-" % uuid.uuid4().hex[:6]
BLKIO = "/sys/fs/cgroup/blkio"
CPU = "/sys/fs/cgroup/cpu"
UNIFIED = "/sys/fs/cgroup/unified"

DEVICES = "    <video><model type='none'/></video>\n    <memballoon model='none'/>"
BFQ = any("bfq" in path.read_text().split() or "[bfq]" in path.read_text()
          for path in Path("/sys/block").glob("*/queue/scheduler"))
needs_bfq = pytest.mark.skipif(not BFQ, reason="this kernel offers no BFQ scheduler: cgroup v1 has no I/O weight "
                                               "here, and libvirt 9.0 then cannot read a running guest's blkio "
                                               "parameters at all")


def io(value):
    """An io_weight request where this kernel can weigh I/O, none where it cannot."""
    return {"io_weight": value} if BFQ else {}


def virsh(uri, *args, check=True):
    proc = subprocess.run(["virsh", "-c", uri] + list(args), capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError("virsh %s failed: %s" % (" ".join(args), proc.stderr))
    return proc.stdout


@pytest.fixture
def guests(libvirtd, tmp_path):
    """Factory for TCG guests named PREFIX+suffix; destroyed and undefined afterwards."""
    made = []

    def make(suffix, start=True, persistent=True):
        name = PREFIX + suffix
        xml = tmp_path / (name + ".xml")
        xml.write_text(tcg_guest_xml(name, DEVICES))
        made.append(name)
        if not persistent:
            virsh(libvirtd, "create", str(xml))
            return name
        virsh(libvirtd, "define", str(xml))
        if start:
            virsh(libvirtd, "start", name)
        return name

    yield make
    for name in made:
        virsh(libvirtd, "destroy", name, check=False)
        virsh(libvirtd, "undefine", name, check=False)


def module(guest_list, *flags, interpreter=VENV_PYTHON, **options):
    """Run the module once; (return code, result dict, whole output)."""
    return run_module("cgroup_weight", dict(options, guests=guest_list), *flags, interpreter=interpreter)


def applied(guest_list, *flags, **options):
    rc, result, _out = module(guest_list, *flags, **options)
    assert rc == 0, result.get("msg")
    return result


def failed(guest_list, **options):
    rc, result, _out = module(guest_list, **options)
    assert rc != 0 and result.get("msg"), result
    return result["msg"]


def weight(path):
    """The default weight in a cgroup weight file (``N`` or ``default N``)."""
    text = Path(path).read_text()
    return int(re.search(r"(?:^|default )(\d+)", text).group(1))


def domain_dir(uri, name, hierarchy):
    """The running domain's cgroup in a v1 hierarchy (libvirt puts the main thread in emulator/)."""
    pid = Path("/run/libvirt/qemu/%s.pid" % name).read_text().strip()
    controller = os.path.basename(hierarchy)
    for line in Path("/proc/%s/cgroup" % pid).read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            path = re.sub(r"/emulator$", "", path)
            return hierarchy + path
    raise AssertionError("%s has no %s cgroup" % (name, controller))


def tune(uri, name, inactive=False):
    """(<blkiotune><weight>, <cputune><shares>) from the domain XML, None when absent."""
    args = ["dumpxml", name] + (["--inactive"] if inactive else [])
    root = ET.fromstring(virsh(uri, *args))
    found = [root.findtext("blkiotune/weight"), root.findtext("cputune/shares")]
    return tuple(int(value) if value is not None else None for value in found)


def block_number(path):
    rdev = os.stat(path).st_rdev
    return "%d:%d" % (os.major(rdev), os.minor(rdev))


def settings(result, scope=None):
    entries = [s for guest in result["guests"] for s in guest["settings"]]
    return dict((s["key"], s) for s in entries if scope is None or s["scope"] == scope)


# ---------------------------------------------------------------- libvirt domains

def test_domains_check_apply_then_nothing_to_do(libvirtd, guests):
    db, batch = guests("db"), guests("batch")
    wanted = [dict(io(1000), name=db, cpu_weight=1000), dict(io(100), name=batch, cpu_weight=100)]
    db_blkio, db_cpu = domain_dir(libvirtd, db, BLKIO), domain_dir(libvirtd, db, CPU)
    io_tune = (lambda value: value) if BFQ else (lambda value: None)

    rc, result, out = module(wanted, "--check", "--diff")
    assert rc == 0 and result["changed"]
    assert '+        "live cpu_weight": 10240' in out  # the diff
    assert weight(db_cpu + "/cpu.shares") == 1024
    assert tune(libvirtd, db, inactive=True) == (None, None)

    result = applied(wanted)
    assert result["changed"]
    assert weight(db_cpu + "/cpu.shares") == 10240  # 1000 on the scale, times 10.24
    assert tune(libvirtd, db) == (io_tune(1000), 10240)
    assert tune(libvirtd, db, inactive=True) == (io_tune(1000), 10240)
    assert tune(libvirtd, batch, inactive=True) == (io_tune(100), 1024)
    live = settings(dict(guests=[result["guests"][0]]), "live")
    assert live["cpu_weight"]["where"] == db_cpu + "/cpu.shares"
    assert live["cpu_weight"]["after"] == 10240
    if BFQ:
        assert weight(db_blkio + "/blkio.bfq.weight") == 1000
        assert live["io_weight"]["where"] == db_blkio + "/blkio.bfq.weight"
        assert (live["io_weight"]["before"], live["io_weight"]["after"]) == (100, 1000)
        batch_live = settings(dict(guests=[result["guests"][1]]), "live")
        assert not batch_live["io_weight"]["changed"]  # 100 was already there

    for flags in (("--check",), ()):
        again = applied(wanted, *flags)
        assert not again["changed"], again


def test_restart_brings_persistent_values_back(libvirtd, guests):
    name = guests("restart")
    applied([dict(io(1000), name=name, cpu_weight=10)])
    before = domain_dir(libvirtd, name, CPU)
    virsh(libvirtd, "destroy", name)
    virsh(libvirtd, "start", name)
    after = domain_dir(libvirtd, name, CPU)
    assert after != before  # a new QEMU process in a new cgroup
    assert weight(after + "/cpu.shares") == 102
    if BFQ:
        assert weight(domain_dir(libvirtd, name, BLKIO) + "/blkio.bfq.weight") == 1000


def test_stopped_guest_gets_config_only_and_refuses_live(libvirtd, guests):
    name = guests("stopped", start=False)
    result = applied([{"name": name, "cpu_weight": 300}])
    assert [s["scope"] for s in result["guests"][0]["settings"]] == ["config"]
    assert tune(libvirtd, name, inactive=True) == (None, 3072)
    msg = failed([{"name": name, "cpu_weight": 300}], scope="live")
    assert "is not running" in msg and "config or both" in msg


@needs_bfq
def test_transient_guest_by_uuid_with_throttles(libvirtd, guests):
    name = guests("transient", persistent=False)
    uuid_text = virsh(libvirtd, "domuuid", name).strip()
    number = block_number("/dev/vda")
    devices = [{"path": "/dev/vda", "read_bytes_sec": 10485760, "write_iops_sec": 200}]
    result = applied([{"name": uuid_text, "devices": devices}])
    assert result["changed"] and result["guests"][0]["name"] == name
    blkio = domain_dir(libvirtd, name, BLKIO)
    assert Path(blkio + "/blkio.throttle.read_bps_device").read_text().split() == [number, "10485760"]
    assert Path(blkio + "/blkio.throttle.write_iops_device").read_text().split() == [number, "200"]
    assert "device_read_bytes_sec: /dev/vda,10485760" in virsh(libvirtd, "blkiotune", name)
    assert not applied([{"name": uuid_text, "devices": devices}])["changed"]

    lifted = [{"path": "/dev/vda", "read_bytes_sec": 0, "write_iops_sec": 0}]
    assert applied([{"name": name, "devices": lifted}])["changed"]
    assert Path(blkio + "/blkio.throttle.read_bps_device").read_text().strip() == ""


def test_module_respawns_under_the_system_python(libvirtd, guests, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    probe = subprocess.run([python, "-c", "import libvirt"], capture_output=True, check=False)
    assert probe.returncode != 0
    name = guests("respawn")
    rc, result, _out = module([{"name": name, "cpu_weight": 700}], interpreter=python)
    assert rc == 0 and result["changed"], result
    assert weight(domain_dir(libvirtd, name, CPU) + "/cpu.shares") == 7168


# ---------------------------------------------------------------- a QEMU process outside libvirt

def start_qemu(name, *wrapper):
    proc = subprocess.Popen(list(wrapper) + [
        "qemu-system-x86_64", "-name", name, "-machine", "none", "-accel", "tcg",
        "-display", "none", "-nodefaults", "-monitor", "none", "-S"])
    deadline = time.monotonic() + 30
    while "qemu" not in Path("/proc/%d/cmdline" % proc.pid).read_text():
        assert time.monotonic() < deadline, "QEMU did not start"
        time.sleep(0.1)
    return proc


def proc_cgroup(pid, controller):
    for line in Path("/proc/%d/cgroup" % pid).read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


@pytest.fixture
def cgroup_parent():
    """A unique parent cgroup, removed with its children (after their processes ended)."""
    yield PREFIX.rstrip("-")
    for hierarchy in (BLKIO, CPU):
        top = os.path.join(hierarchy, PREFIX.rstrip("-"))
        for directory, _subdirs, _files in sorted(os.walk(top), reverse=True):
            os.rmdir(directory)


@pytest.fixture
def low_prio(cgroup_parent):
    others = sorted(pid for pid, name in qemu_processes().items() if name == "low_prio")
    assert not others, "another QEMU -name low_prio is running (pids %s)" % others
    proc = start_qemu("low_prio")
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_bare_qemu_process_gets_its_weight(low_prio, cgroup_parent):
    group = cgroup_parent + "/low_prio"
    wanted = [dict(io(10), name="low_prio", target="process", cgroup=group, cpu_weight=10,
                   devices=[{"path": "/dev/vda", "write_bytes_sec": 1048576}])]
    rc, result, _out = module(wanted, "--check")
    assert rc == 0 and result["changed"]
    assert not os.path.exists(os.path.join(BLKIO, group))

    result = applied(wanted)
    assert result["changed"] and result["guests"][0]["pid"] == low_prio.pid
    assert proc_cgroup(low_prio.pid, "blkio") == "/" + group
    assert proc_cgroup(low_prio.pid, "cpu") == "/" + group
    assert weight(os.path.join(CPU, group, "cpu.shares")) == 102
    assert Path(BLKIO, group, "blkio.throttle.write_bps_device").read_text().split() == [
        block_number("/dev/vda"), "1048576"]
    if BFQ:
        assert weight(os.path.join(BLKIO, group, "blkio.bfq.weight")) == 10
        assert settings(result)["io_weight"]["where"] == os.path.join(BLKIO, group, "blkio.bfq.weight")

    assert not applied(wanted)["changed"]
    by_pid = [dict(wanted[0], name="any-label", pid=low_prio.pid, cpu_weight=20)]
    result = applied(by_pid)
    assert result["changed"] and weight(os.path.join(CPU, group, "cpu.shares")) == 204


def test_process_managed_by_libvirt_is_refused(libvirtd, guests):
    name = guests("managed")
    msg = failed([{"name": name, "target": "process", "io_weight": 10}])
    assert "managed by libvirt" in msg and "target domain" in msg


# ---------------------------------------------------------------- bad input changes nothing

@needs_bfq
def test_out_of_range_names_this_hosts_range_and_changes_nothing(libvirtd, guests):
    first, second = guests("range1"), guests("range2")
    msg = failed([{"name": first, "io_weight": 500}, {"name": second, "io_weight": 5000}])
    assert "io_weight 5000 is out of range on this host" in msg
    assert "blkio.bfq.weight (cgroup v1)" in msg and "1-1000" in msg
    assert weight(domain_dir(libvirtd, first, BLKIO) + "/blkio.bfq.weight") == 100
    assert tune(libvirtd, first, inactive=True) == (None, None)

    msg = failed([{"name": first, "cpu_weight": 20000}])
    assert "outside the weight scale 1-10000" in msg


def test_unknown_guest_lists_known_guests(libvirtd, guests):
    known = guests("known")
    msg = failed([{"name": known, "cpu_weight": 200}, {"name": PREFIX + "nosuch", "cpu_weight": 200}])
    assert "no libvirt domain %snosuch on this host" % PREFIX in msg and known in msg
    assert weight(domain_dir(libvirtd, known, CPU) + "/cpu.shares") == 1024
    msg = failed([{"name": PREFIX + "nosuch", "target": "process", "cpu_weight": 200}])
    assert "no QEMU process runs with -name" in msg and "known guests:" in msg


def test_unknown_device_lists_block_devices(libvirtd, guests):
    name = guests("device")
    msg = failed([{"name": name, "devices": [{"path": "/dev/cgw-nope", "read_iops_sec": 5}]}])
    assert "unknown device /dev/cgw-nope" in msg and "/dev/vda" in msg
    msg = failed([{"name": name, "devices": [{"path": "/dev/null", "read_iops_sec": 5}]}])
    assert "not a block device" in msg


@needs_bfq
def test_per_device_weight_unsupported_here(libvirtd, guests):
    name = guests("devweight")
    msg = failed([{"name": name, "io_weight": 300,
                   "devices": [{"path": "/dev/vda", "weight": 500}]}])
    assert "not supported on this host" in msg and "blkio.weight_device" in msg
    assert weight(domain_dir(libvirtd, name, BLKIO) + "/blkio.bfq.weight") == 100


@pytest.mark.skipif(BFQ, reason="this kernel offers BFQ: cgroup v1 weighs I/O here")
def test_io_weight_is_refused_where_the_kernel_cannot_weigh_io(libvirtd, guests):
    name = guests("nobfq")
    for flags in (("--check",), ()):
        rc, result, _out = module([{"name": name, "io_weight": 500, "cpu_weight": 500}], *flags)
        assert rc != 0 and "cgroup v1 cannot weigh I/O on this host" in result["msg"], result
        assert "modprobe bfq" in result["msg"]
    assert weight(domain_dir(libvirtd, name, CPU) + "/cpu.shares") == 1024
    assert tune(libvirtd, name, inactive=True) == (None, None)


def test_controller_missing_in_cgroup_v2(low_prio, cgroup_parent):
    v2 = Path(UNIFIED, "cgroup.controllers").read_text().split()
    if "io" in v2:
        pytest.skip("this host's cgroup v2 hierarchy has the io controller")
    msg = failed([{"name": "low_prio", "target": "process", "cgroup": cgroup_parent + "/x",
                   "io_weight": 10}], cgroup_version="2")
    assert "io controller is not available in cgroup v2" in msg
    assert "bound to the cgroup v1 hierarchy at %s" % BLKIO in msg
    assert not os.path.exists(os.path.join(BLKIO, cgroup_parent))


def test_failure_while_writing_restores_earlier_guests(libvirtd, guests, cgroup_parent):
    """A real-time QEMU cannot join a cpu cgroup without an RT budget (the kernel says EINVAL)."""
    if not os.path.exists(os.path.join(CPU, "cpu.rt_runtime_us")):
        pytest.skip("kernel without RT group scheduling")
    name = guests("rollback")
    rt_name = PREFIX + "rt"
    proc = start_qemu(rt_name, "chrt", "-f", "1")
    try:
        msg = failed([dict(io(900), name=name, cpu_weight=900),
                      {"name": rt_name, "target": "process", "cgroup": cgroup_parent + "/rt",
                       "cpu_weight": 50}])
        assert "cgroup.procs failed" in msg
        assert not BFQ or weight(domain_dir(libvirtd, name, BLKIO) + "/blkio.bfq.weight") == 100
        assert weight(domain_dir(libvirtd, name, CPU) + "/cpu.shares") == 1024
        assert tune(libvirtd, name)[1] in (None, 1024)
        assert not os.path.exists(os.path.join(CPU, cgroup_parent))
        assert proc_cgroup(proc.pid, "cpu") == "/"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# ---------------------------------------------------------------- the guest_resources role

ROLE_PLAY = """- name: Guest resources
  hosts: localhost
  gather_facts: false
  roles:
    - role: kvmsec.hardening.guest_resources
"""


def role(tmp_path, variables, *flags):
    """Run the role once with ``variables``; (return code, PLAY RECAP line, stdout)."""
    (tmp_path / "play.yml").write_text(ROLE_PLAY)
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"))
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % VENV_PYTHON, "-e", "@%s" % (tmp_path / "vars.json"),
         str(tmp_path / "play.yml")] + list(flags),
        capture_output=True, text=True, env=env, timeout=300, check=False)
    recap = re.search(r"^localhost\s*:.*$", proc.stdout, re.M)
    return proc.returncode, recap.group(0) if recap else "", proc.stdout


@needs_bfq
def test_role_classes_and_overrides_reproduce_the_ten_to_one_split(libvirtd, guests, tmp_path):
    db, web, batch = guests("rdb"), guests("rweb"), guests("rbatch")
    variables = {
        "guest_resources_guests": [{"name": db, "class": "high"}, {"name": web},
                                   {"name": batch, "class": "low", "cpu_weight": 50}],
        "guest_resources_overrides": {web: {"io_weight": 200}},
    }
    rc, recap, out = role(tmp_path, variables, "--check")
    assert rc == 0 and "changed=1" in recap, out
    assert weight(domain_dir(libvirtd, db, BLKIO) + "/blkio.bfq.weight") == 100

    rc, recap, out = role(tmp_path, variables)
    assert rc == 0 and "changed=1" in recap, out
    expected = {db: (1000, 10240), web: (200, 1024), batch: (10, 512)}
    for name, (io, shares) in expected.items():
        assert weight(domain_dir(libvirtd, name, BLKIO) + "/blkio.bfq.weight") == io
        assert weight(domain_dir(libvirtd, name, CPU) + "/cpu.shares") == shares
        assert tune(libvirtd, name, inactive=True) == (io, shares)

    rc, recap, out = role(tmp_path, variables)
    assert rc == 0 and "changed=0" in recap, out


def test_role_rejects_an_unknown_class(libvirtd, guests, tmp_path):
    name = guests("rclass")
    rc, _recap, out = role(tmp_path, {"guest_resources_guests": [{"name": name, "class": "urgent"}]})
    assert rc != 0 and "unknown priority class urgent" in out and "high, normal, low" in out
    assert weight(domain_dir(libvirtd, name, CPU) + "/cpu.shares") == 1024


def test_role_off_switch(libvirtd, guests, tmp_path):
    name = guests("roff")
    variables = {"guest_resources_enabled": False,
                 "guest_resources_guests": [{"name": name, "class": "high"}]}
    rc, recap, out = role(tmp_path, variables)
    assert rc == 0 and "changed=0" in recap, out
    assert weight(domain_dir(libvirtd, name, CPU) + "/cpu.shares") == 1024
