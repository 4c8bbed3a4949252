"""sVirt on real lab hosts: the svirt role, svirt_label, and the isolation they give.

One enforcing VM, shared with test_selinux_lab (conftest's selinux_vm): it has a local policy
module that lets libvirt start guests (the one test_selinux_lab generated from the denials, or the
one the selinux role ships: roles/selinux/files/modules/kvmsec_libvirt.te, docs/lab.md),
virt_use_execmem is turned on (TCG only), then tiny TCG guests with 16 MiB qcow2 disks are
started paused: QEMU opens its disks and gets its label at start, which is all these tests need.

The isolation proof: a root shell is unconfined_t, and Debian's policy does not let
unconfined_t enter svirt_t (`runcon ... svirt_t` is denied with an AVC: only libvirt, virtd_t,
may start svirt_t processes). So the runcon statement - svirt_t:s0:c1,c3 cannot read a file
labelled svirt_image_t:s0:c1,c2 while svirt_t:s0:c1,c2 can - is reproduced with QEMU processes
that libvirt starts with exactly those static labels (relabel=no, so the file keeps its label),
and the kernel's verdict is read from the audit log. Then guest A's running QEMU process is
asked to open guest B's image.

The AppArmor twin - a guest confined by its libvirt profile in enforce mode, a profile put in
complain mode by hand switched back, an unconfined guest refused - runs in the verify of the
Molecule apparmor scenario, on the VM that scenario already has up.
"""

import json
import re
import tempfile
from pathlib import Path

import pytest

from ansible_jobs import tcg_guest_xml  # tests/integration, on sys.path by its conftest

ROOT = Path(__file__).resolve().parents[3]

IMAGES = "/var/lib/libvirt/images"
POLICY = ROOT / "roles" / "selinux" / "files" / "modules" / "kvmsec_libvirt.te"

DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      {readonly}
    </disk>"""

# the role needs only the OS family from the facts: the minimum subset spares the slow VM
ROLE_PLAY = [{"name": "svirt role", "hosts": "kvm_hosts", "become": True, "gather_facts": True,
              "gather_subset": ["!all"], "roles": [{"role": "kvmsec.hardening.svirt"}]}]


def define_guest(vm, name, disk=None, readonly=False):
    disk = disk or "%s/%s.qcow2" % (IMAGES, name)
    vm.ssh("test -e {d} || qemu-img create -q -f qcow2 {d} 16M".format(d=disk))
    vm.put(tcg_guest_xml(name, DISK_XML.format(disk=disk, readonly="<readonly/>" if readonly else "")),
           "/tmp/%s.xml" % name)
    vm.ssh("virsh define /tmp/%s.xml" % name)


def start(vm, name, check=True):
    return vm.ssh("virsh start --paused %s" % name, check=check)


def assert_unconfined_guest_refused(vm, name, model):
    """Define NAME with <seclabel type='none'/> for MODEL; libvirt must refuse to start it."""
    define_guest(vm, name)
    vm.ssh("virsh dumpxml --inactive %s | sed \"s|</domain>|<seclabel type='none' "
           "model='%s'/></domain>|\" > /tmp/none.xml && virsh define /tmp/none.xml" % (name, model))
    refused = start(vm, name, check=False)
    assert refused.returncode != 0
    assert "Unconfined guests are not allowed on this host" in refused.stderr


def restart(vm, name):
    vm.ssh("virsh destroy %s && virsh start --paused %s" % (name, name))


def process_label(vm, name):
    return vm.ssh("tr -d '\\0' < /proc/$(cat /run/libvirt/qemu/%s.pid)/attr/current" % name).stdout.strip()


def file_label(vm, path):
    return vm.ssh("stat -c %%C %s" % path).stdout.strip()


def cats(label):
    return label.split(":", 4)[4]


def avc_denials(vm, since_marker):
    """AVC records logged after the marker line count (audit.log, not ausearch over SSH)."""
    return vm.ssh("tail -n +%d /var/log/audit/audit.log | grep 'avc: .*denied' || true"
                  % since_marker).stdout


def audit_mark(vm):
    return int(vm.ssh("wc -l < /var/log/audit/audit.log").stdout) + 1


def run_role(vm, extra_vars, diff=False):
    with tempfile.TemporaryDirectory() as tmp:
        playbook = Path(tmp) / "svirt.yml"
        playbook.write_text(json.dumps(ROLE_PLAY))
        proc = vm.playbook(playbook, extra_vars=extra_vars, diff=diff)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def recap_changed(output):
    return int(re.search(r"changed=(\d+)", output.split("PLAY RECAP")[1]).group(1))


def ok(result, output):
    assert not result.get("failed"), output
    return result


# ====================================================================== SELinux

@pytest.fixture(scope="module")
def sel(selinux_vm):
    vm = selinux_vm
    # guests start under enforcing with the selinux role's module, installed here by hand (one
    # policy transaction, ~35-70 s; the role itself is proven by Molecule), or with kvmsec_avc,
    # the module test_selinux_lab made from this host's own denials at a guest's start, when that
    # file ran first on this VM: a transaction fewer
    if not re.search(r"(?m)^400 kvmsec_(libvirt|avc) ", vm.ssh("semodule --list-modules=full").stdout):
        vm.put(POLICY.read_text(), "/root/policy/kvmsec_libvirt.te")
        vm.ssh("cd /root/policy && checkmodule -M -m -o kvmsec_libvirt.mod kvmsec_libvirt.te"
               " && semodule_package -o kvmsec_libvirt.pp -m kvmsec_libvirt.mod"
               " && semodule -X 400 -i kvmsec_libvirt.pp")
    vm.ssh("setsebool virt_use_execmem on")
    for name in ("sv-a", "sv-b", "sv-c"):
        define_guest(vm, name)
    return vm


def test_role_confines_guests_and_refuses_unconfined(sel):
    daemon = sel.ssh("systemctl show -p MainPID libvirtd").stdout
    labels = {"svirt_guest_labels": [{"name": "sv-a"}, {"name": "sv-b", "type": "static"}],
              "svirt_reserved_categories": ["c1,c2", "c1,c3"]}
    output = run_role(sel, labels)
    assert recap_changed(output) > 0
    settings = sel.ssh("grep -E '^[a-z_]+ =' /etc/libvirt/qemu.conf").stdout.splitlines()
    assert sorted(settings) == sorted([
        'security_driver = "selinux"', "security_default_confined = 1",
        "security_require_confined = 1", "dynamic_ownership = 1", "remember_owner = 1",
        'user = "libvirt-qemu"', 'group = "libvirt-qemu"'])
    # the handler restarted libvirtd because qemu.conf changed
    assert sel.ssh("systemctl show -p MainPID libvirtd").stdout != daemon
    report = json.loads(sel.ssh("cat /var/lib/kvmsec/svirt-labels.json").stdout)
    assert report["model"] == "selinux"
    assert {d["name"]: d["type"] for d in report["domains"]} == \
        {"sv-a": "dynamic", "sv-b": "static", "sv-c": None}
    assert sel.ssh("stat -c %a /var/lib/kvmsec/svirt-labels.json").stdout.strip() == "600"
    # libvirt itself now refuses an unconfined guest
    assert_unconfined_guest_refused(sel, "sv-none", "selinux")
    sel.ssh("virsh undefine sv-none")


def test_two_guests_get_different_pairs_and_carry_them(sel):
    start(sel, "sv-a")
    start(sel, "sv-b")
    result, output = sel.module("svirt_label", {})
    domains = {d["name"]: d for d in ok(result, output)["domains"]}
    seen = {}
    for name in ("sv-a", "sv-b"):
        process = process_label(sel, name)
        image = file_label(sel, "%s/%s.qcow2" % (IMAGES, name))
        assert process.startswith("system_u:system_r:svirt_t:s0:c")
        assert image.startswith("system_u:object_r:svirt_image_t:s0:c")
        assert cats(process) == cats(image) == domains[name]["categories"]
        assert domains[name]["process_label"] == process
        assert domains[name]["images"][0]["status"] == "ok"
        seen[name] = cats(process)
    assert seen["sv-a"] != seen["sv-b"]
    assert seen["sv-b"] not in ("c1,c2", "c1,c3")   # reserved
    assert result["problems"] == [] and result["collisions"] == []


def test_static_allocation_is_predicted_by_check_mode_and_kept(sel):
    request = {"guests": [{"name": "sv-c", "type": "static"}]}
    predicted, output = sel.module("svirt_label", request, check=True, diff=True)
    assert ok(predicted, output)["changed"] and predicted["guests"][0]["allocated"]
    assert "seclabel" not in sel.ssh("virsh dumpxml --inactive sv-c").stdout
    applied, output = sel.module("svirt_label", request, diff=True)
    label = ok(applied, output)["guests"][0]["label"]
    assert label == predicted["guests"][0]["label"]
    assert "+<seclabel type=\"static\" model=\"selinux\" relabel=\"yes\"><label>%s</label>" % label in output
    again, output = sel.module("svirt_label", request)
    assert ok(again, output)["changed"] is False and again["guests"][0]["allocated"] is False
    start(sel, "sv-c")
    assert process_label(sel, "sv-c") == label
    others = {cats(process_label(sel, name)) for name in ("sv-a", "sv-b")}
    assert cats(label) not in others


def test_forced_duplicate_is_detected_and_resolved(sel):
    # sv-c is given sv-a's running pair by hand, as when a static label is copied between hosts
    pair = cats(process_label(sel, "sv-a"))
    sel.ssh("virsh destroy sv-c && virsh dumpxml --inactive sv-c"
            " | sed -E 's/svirt_t:s0:c[0-9]+,c[0-9]+/svirt_t:s0:%s/' > /tmp/dup.xml"
            " && virsh define /tmp/dup.xml" % pair)
    start(sel, "sv-c")   # libvirt does not check static labels against running guests
    assert cats(process_label(sel, "sv-c")) == pair
    failed, output = sel.module("svirt_label", {"guests": [{"name": "sv-a"}]})
    assert failed.get("failed"), output
    assert "domains sv-a and sv-c share the categories %s" % pair in failed["msg"]
    fixed, output = sel.module("svirt_label", {"guests": [{"name": "sv-c", "type": "static"}]})
    assert ok(fixed, output)["changed"] and fixed["guests"][0]["restart_required"]
    assert fixed["collisions"] == [{"categories": pair, "domains": ["sv-a", "sv-c"], "where": "running"}]
    assert "share the categories %s until one of them is restarted" % pair in " ".join(output.split())
    restart(sel, "sv-c")
    assert cats(process_label(sel, "sv-c")) not in (pair, cats(process_label(sel, "sv-b")))
    clean, output = sel.module("svirt_label", {"guests": [{"name": "sv-c", "type": "static"}]})
    assert ok(clean, output)["changed"] is False and clean["collisions"] == []


def test_unconfined_is_refused_and_nothing_changes(sel):
    before = sel.ssh("virsh dumpxml --inactive sv-c").stdout
    refused, output = sel.module("svirt_label", {"guests": [{"name": "sv-c", "type": "none"}]})
    assert refused.get("failed"), output
    assert "type none runs its QEMU process unconfined" in refused["msg"]
    assert "allow_unconfined" in refused["msg"]
    assert sel.ssh("virsh dumpxml --inactive sv-c").stdout == before


def test_relabelled_image_of_a_static_guest_is_fixed(sel):
    image = "%s/sv-b.qcow2" % IMAGES
    expected = file_label(sel, image)
    sel.ssh("chcon -l s0:c1,c2 %s" % image)
    request = {"guests": [{"name": "sv-b", "type": "static"}]}
    report, output = sel.module("svirt_label", {})
    assert "sv-b: image %s is labelled system_u:object_r:svirt_image_t:s0:c1,c2, expected %s" \
        % (image, expected) in ok(report, output)["problems"]
    fixed, output = sel.module("svirt_label", request)
    assert ok(fixed, output)["guests"][0]["image_fixes"] == [
        {"path": image, "before": "system_u:object_r:svirt_image_t:s0:c1,c2", "after": expected}]
    assert file_label(sel, image) == expected
    again, output = sel.module("svirt_label", request)
    assert ok(again, output)["changed"] is False and again["problems"] == []


def test_runcon_cannot_enter_svirt_t_from_a_root_shell(sel):
    sel.ssh("echo data > /root/probe && chcon system_u:object_r:svirt_image_t:s0:c1,c2 /root/probe")
    mark = audit_mark(sel)
    proc = sel.ssh("runcon system_u:system_r:svirt_t:s0:c1,c2 cat /root/probe", check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert re.search(r"denied +\{ transition \}.*tcontext=system_u:system_r:svirt_t:s0:c1,c2",
                     avc_denials(sel, mark))


def test_isolation_c1_c3_cannot_read_c1_c2_while_c1_c2_can(sel):
    # the image is labelled c1,c2 once; relabel=no keeps libvirt from changing it
    proof = "%s/proof.qcow2" % IMAGES
    sel.ssh("qemu-img create -q -f qcow2 %s 16M && chcon system_u:object_r:svirt_image_t:s0:c1,c2 %s"
            % (proof, proof))
    define_guest(sel, "proof-c1c3", disk=proof, readonly=True)
    define_guest(sel, "proof-c1c2", disk=proof, readonly=True)
    result, output = sel.module("svirt_label", {"guests": [
        {"name": "proof-c1c3", "type": "static", "categories": "c1,c3", "relabel": False},
        {"name": "proof-c1c2", "type": "static", "categories": "c1,c2", "relabel": False}]})
    assert ok(result, output)["changed"]
    mark = audit_mark(sel)
    denied = start(sel, "proof-c1c3", check=False)
    assert denied.returncode != 0
    assert "Could not open '%s': Permission denied" % proof in denied.stderr
    assert re.search(r"denied +\{ read \} .*name=\"proof.qcow2\" .*"
                     r"scontext=system_u:system_r:svirt_t:s0:c1,c3 "
                     r"tcontext=system_u:object_r:svirt_image_t:s0:c1,c2", avc_denials(sel, mark))
    start(sel, "proof-c1c2")
    assert process_label(sel, "proof-c1c2") == "system_u:system_r:svirt_t:s0:c1,c2"
    assert file_label(sel, proof) == "system_u:object_r:svirt_image_t:s0:c1,c2"
    sel.ssh("virsh destroy proof-c1c2")


def test_guest_a_cannot_open_guest_b_image(sel):
    a_label = process_label(sel, "sv-a")
    b_image = "%s/sv-b.qcow2" % IMAGES
    b_label = file_label(sel, b_image)
    # relabel=no on the disk: libvirt hands QEMU the path as it is, so A's process must open it
    sel.put("""<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source file='%s'><seclabel model='selinux' relabel='no'/></source>
  <target dev='vdb' bus='virtio'/>
  <readonly/>
</disk>
""" % b_image, "/tmp/b-disk.xml")
    mark = audit_mark(sel)
    proc = sel.ssh("virsh attach-device sv-a /tmp/b-disk.xml --live", check=False)
    assert proc.returncode != 0
    assert "Could not open '%s': Permission denied" % b_image in proc.stderr
    pid = sel.ssh("cat /run/libvirt/qemu/sv-a.pid").stdout.strip()
    assert re.search(r"denied +\{ read \} for +pid=%s .*name=\"sv-b.qcow2\" .*scontext=%s tcontext=%s"
                     % (pid, re.escape(a_label), re.escape(b_label)), avc_denials(sel, mark))
    assert file_label(sel, b_image) == b_label


def test_an_encrypted_pool_volume_is_checked_by_its_path(sel):
    # SVIRT-02 for a disk libvirt knows only as a storage pool volume (type='volume'), LUKS
    # encrypted as image_encryption leaves pool volumes: its label is read at the volume's path
    pool, secret = "kvmsec-pool", "5a1f0c3e-7b2d-4c61-9e0a-3d8f6b2a9c11"
    path = "%s/%s/enc.qcow2" % (IMAGES, pool)
    encryption = "<encryption format='luks'><secret type='passphrase' uuid='%s'/></encryption>" % secret
    sel.put("<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='volume'><volume>%s</volume>"
            "</usage></secret>" % (secret, path), "/tmp/secret.xml")
    sel.put("<volume><name>enc.qcow2</name><capacity unit='M'>16</capacity><target><format type='qcow2'/>"
            "%s</target></volume>" % encryption, "/tmp/volume.xml")
    sel.ssh("virsh -q pool-define-as %s dir --target %s/%s && virsh -q pool-build %s && virsh -q pool-start %s"
            " && virsh -q secret-define /tmp/secret.xml && virsh -q secret-set-value %s --file /dev/stdin --plain"
            " && virsh -q vol-create %s /tmp/volume.xml"
            % (pool, IMAGES, pool, pool, pool, secret, pool), data="kvmsec-lab-passphrase")
    sel.put(tcg_guest_xml("sv-enc", "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
                                    "<source pool='%s' volume='enc.qcow2'/><target dev='vda' bus='virtio'/>%s"
                                    "</disk>" % (pool, encryption)), "/tmp/sv-enc.xml")
    sel.ssh("virsh define /tmp/sv-enc.xml")
    try:
        start(sel, "sv-enc")
        info = sel.ssh("qemu-img info -U %s" % path).stdout
        assert "encrypted: yes" in info and "format: luks" in info
        result, output = sel.module("svirt_label", {})
        guest = dict((d["name"], d) for d in ok(result, output)["domains"])["sv-enc"]
        assert [(i["path"], i["status"]) for i in guest["images"]] == [(path, "ok")]
        assert cats(file_label(sel, path)) == cats(process_label(sel, "sv-enc")) == guest["categories"]
        sel.ssh("chcon -l s0:c1,c2 %s" % path)
        drifted, output = sel.module("svirt_label", {})
        assert "sv-enc: image %s is labelled system_u:object_r:svirt_image_t:s0:c1,c2" % path \
            in " ".join(ok(drifted, output)["problems"])
    finally:
        sel.ssh("virsh destroy sv-enc; virsh undefine sv-enc", check=False)
