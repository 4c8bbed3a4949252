"""The lab: disposable Debian 12 KVM host VMs with SELinux enforcing, booted under QEMU TCG.

    python3 tests/lab_vm/kvmlab.py COMMAND ...

    kvmlab.py build                      build (or reuse) the cached base image, print its dir
    kvmlab.py boot NAME [--lsm apparmor] [--no-iommu] [--firmware uefi|uefi-secureboot]
                                         boot a VM on a fresh overlay, wait for SSH, print JSON
    kvmlab.py reboot NAME                reboot it keeping its overlay, wait for SSH again
    kvmlab.py stop NAME                  stop it and delete its overlay
    kvmlab.py ssh NAME [CMD...]          run a command in it as root
    kvmlab.py info NAME                  print its JSON (host, port, tls_port, console_port, key, ...)
    kvmlab.py status                     every VM's state and serial console tail (what hung)
    kvmlab.py prune                      stop every VM, delete run folders and stale images

The base image is cached under $KVMSEC_LAB_CACHE (default ~/.cache/kvmsec-lab), keyed by the
hash of everything that goes into it, so a second build costs nothing. Each VM boots from a
copy-on-write overlay of that image: every test starts pristine.

By default QEMU starts the image's kernel itself (-kernel/-initrd/-append): no boot loader, so
kernel arguments written with update-grub never take effect. --firmware uefi boots through
Debian's OVMF, the image's ESP (signed shim, signed GRUB) and /boot/grub/grub.cfg, which
update-grub in the VM regenerates; uefi-secureboot does the same with Secure Boot on (docs/lab.md).
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# scripts/bootstrap links Mitogen's strategy plugins here (docs/mitogen.md)
MITOGEN_STRATEGY = HERE.parents[1] / ".cache" / "mitogen-strategy"
CACHE = Path(os.environ.get("KVMSEC_LAB_CACHE", Path.home() / ".cache" / "kvmsec-lab"))
BOOT_TIMEOUT = int(os.environ.get("KVMSEC_LAB_BOOT_TIMEOUT", "420"))
MEMORY_MB = os.environ.get("KVMSEC_LAB_MEMORY", "3072")
# A task on the emulated host takes seconds; one still running after this has hung
TASK_TIMEOUT = int(os.environ.get("KVMSEC_LAB_TASK_TIMEOUT", "600"))
# SSH gives up on a VM that stops answering after this many seconds, instead of waiting forever
SSH_KEEPALIVE = ("-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")
KERNEL_ARGS = {
    "selinux": "security=selinux selinux=1 enforcing=1",
    "apparmor": "security=apparmor apparmor=1",
}
# The kernel role's default arguments (KVM-KERNEL-04). A kernel QEMU starts directly has no boot
# loader for the role to write them to, so the lab passes them itself; a boot through the
# firmware and GRUB gets none of them, so that test_kernel_arguments_lab proves the role's own path.
BASELINE_ARGS = "mitigations=auto,nosmt slab_nomerge page_alloc.shuffle=1 vsyscall=none"
# Debian's ovmf package (requirements-apt.txt): firmware code (read-only) and the variable store
# each VM gets a copy of. The secboot code needs SMM; the .ms variables have Microsoft's keys
# enrolled, which Debian's shim is signed with, and Secure Boot on.
OVMF_DIR = Path(os.environ.get("KVMSEC_LAB_OVMF", "/usr/share/OVMF"))
FIRMWARE = {
    "direct": None,
    "uefi": {"code": "OVMF_CODE_4M.fd", "vars": "OVMF_VARS_4M.fd", "secure": False},
    "uefi-secureboot": {"code": "OVMF_CODE_4M.secboot.fd", "vars": "OVMF_VARS_4M.ms.fd", "secure": True},
}


class LabError(Exception):
    pass


def image_key():
    """Hash of every input of the image build: changing any of them rebuilds the image."""
    digest = hashlib.sha256()
    inputs = [HERE / "build-image.sh", HERE / "packages.txt"]
    inputs += sorted(p for p in (HERE / "rootfs").rglob("*") if p.is_file())
    for path in inputs:
        digest.update(str(path.relative_to(HERE)).encode())
        digest.update(path.read_bytes())
    digest.update(os.environ.get("KVMSEC_LAB_MIRROR", "").encode())
    return digest.hexdigest()[:16]


def build():
    image_dir = CACHE / "images" / image_key()
    if (image_dir / "base.qcow2").exists():
        return image_dir
    image_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run([str(HERE / "build-image.sh"), str(image_dir)], check=True)
    print("lab: image built in %.0f s" % (time.monotonic() - started), file=sys.stderr)
    prune_images()
    return image_dir


def prune_images():
    """Delete the images of other keys and their failed builds' logs and leftovers. A build
    killed outright leaves the host's /dev, /proc, /sys and the package cache mounted in its
    chroot: those are unmounted first, and a folder that still has a mount is left alone."""
    current = image_key()
    for stale in (CACHE / "images").glob("*"):
        if stale.name.startswith(current):
            continue
        if not stale.is_dir():
            stale.unlink()
            continue
        for mount in sorted(mounts_under(stale), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        if mounts_under(stale):
            print("lab: left %s alone: something is still mounted in it" % stale, file=sys.stderr)
        else:
            shutil.rmtree(stale, ignore_errors=True)


def mounts_under(directory):
    prefix = str(directory) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [point for point in points if point.startswith(prefix)]


def run_dir(name):
    return CACHE / "run" / name


def run_files(name):
    """Where a VM's QEMU keeps its pid and serial console: known before it boots, so a boot
    killed before it wrote vm.json can still be stopped and read."""
    directory = run_dir(name)
    return {"name": name, "pidfile": str(directory / "qemu.pid"), "serial": str(directory / "serial.log")}


def load_info(name):
    info_file = run_dir(name) / "vm.json"
    if not info_file.exists():
        raise LabError("lab VM %s is not running (no %s)" % (name, info_file))
    return json.loads(info_file.read_text())


def free_ports(count):
    """count different free ports: the sockets are held together so none is handed out twice."""
    sockets = [socket.socket() for dummy in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ssh_argv(info, *command):
    return [
        "ssh", "-q", "-p", str(info["port"]), "-i", info["key"],
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", *SSH_KEEPALIVE,
        "root@127.0.0.1", *command,
    ]


def ansible_env(strategy="mitogen_linear"):
    """The environment of an Ansible run against lab VMs: pipelining, as examples/ansible.cfg
    recommends, a limit on every task, and Mitogen's strategy unless ``strategy`` is "linear"
    (Ansible's own, which the README's main command proves). Mitogen does not read
    StrictHostKeyChecking from the inventory's SSH arguments, so host keys go unchecked here:
    every lab VM has a fresh one."""
    env = dict(os.environ, ANSIBLE_PIPELINING="true", ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_TASK_TIMEOUT=str(TASK_TIMEOUT))
    env.pop("ANSIBLE_STRATEGY_PLUGINS", None)
    env["ANSIBLE_STRATEGY"] = strategy
    if strategy != "linear":
        if not MITOGEN_STRATEGY.is_dir():
            raise LabError("no Mitogen strategy plugins at %s: run scripts/bootstrap" % MITOGEN_STRATEGY)
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(MITOGEN_STRATEGY)
    return env


def lab_kernel_args(info):
    """The kernel arguments that differ between lab VMs: the LSM, and the IOMMU's."""
    return KERNEL_ARGS[info["lsm"]] + (" intel_iommu=on" if info["iommu"] else "")


def boot_argv(info, image_dir):
    """How QEMU starts the VM's kernel. Directly: -kernel/-initrd/-append. Through the firmware:
    OVMF from pflash (its variables in the VM's run folder), which boots the ESP's shim and GRUB
    from a disk on q35's own AHCI controller (an overlay of the image's esp.img: IDE disks cannot
    be read-only; PCI addresses stay as in a direct boot, the root disk stays /dev/vda); GRUB reads the root disk's /boot/grub/grub.cfg, whose kernel command
    lines end in $kvmlab_args, set from the SMBIOS OEM string given here. No PXE ROM on the NIC:
    the firmware would only spend time loading it."""
    firmware = FIRMWARE[info.get("firmware", "direct")]
    if firmware is None:
        return [
            "-kernel", str(image_dir / "vmlinuz"), "-initrd", str(image_dir / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 %s %s" % (lab_kernel_args(info), BASELINE_ARGS),
        ]
    argv = [
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s" % (OVMF_DIR / firmware["code"]),
        "-drive", "if=pflash,format=raw,unit=1,file=%s" % info["efivars"],
        "-drive", "if=none,id=esp,format=qcow2,file=%s" % info["esp"],
        "-device", "ide-hd,drive=esp,bus=ide.0,bootindex=0",
        "-smbios", "type=11,value=%s" % lab_kernel_args(info),
        "-global", "virtio-net-pci.romfile=",
    ]
    if firmware["secure"]:
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return argv


def qemu_argv(info, image_dir):
    machine = "q35,accel=tcg,kernel-irqchip=split"
    if (FIRMWARE[info.get("firmware", "direct")] or {}).get("secure"):
        machine += ",smm=on"  # the Secure Boot firmware keeps its variables safe in SMM
    argv = [
        "qemu-system-x86_64", "-machine", machine,
        "-cpu", "max", "-smp", "2", "-m", MEMORY_MB,
        *boot_argv(info, image_dir),
        "-drive", "file=%s,if=virtio,format=qcow2" % info["overlay"],
        # SSH, and libvirt's TLS port and the first guest console's port for the real-client
        # checks (docs/remote-access.md)
        "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22,hostfwd=tcp:127.0.0.1:%d-:16514,"
        "hostfwd=tcp:127.0.0.1:%d-:5900" % (info["port"], info["tls_port"], info["console_port"]),
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "edu",
        "-display", "none", "-serial", "file:%s" % info["serial"],
        "-pidfile", info["pidfile"], "-daemonize",
    ]
    if info["iommu"]:
        argv[argv.index("-smp"):argv.index("-smp")] = [
            "-device", "intel-iommu,intremap=on,caching-mode=on"]
    if FIRMWARE[info.get("firmware", "direct")]:
        # OVMF connects only the devices in QEMU's boot order, and GRUB must see the root disk:
        # it gets a boot index, as the same virtio-blk device at the same place (after edu)
        root = argv.index("file=%s,if=virtio,format=qcow2" % info["overlay"])
        argv[root] = "file=%s,if=none,id=root,format=qcow2" % info["overlay"]
        edu = argv.index("edu")
        argv[edu + 1:edu + 1] = ["-device", "virtio-blk-pci,drive=root,bootindex=1"]
    return argv


def serial_tail(info, lines=40):
    try:
        text = Path(info["serial"]).read_text(errors="replace")
    except OSError:
        return "(no serial console output)"
    return "\n".join(text.splitlines()[-lines:])


def qemu_alive(info):
    try:
        pid = int(Path(info["pidfile"]).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def wait_for_ssh(info, started):
    deadline = started + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if not qemu_alive(info):
            raise LabError("lab VM %s: QEMU exited during boot (full log: %s). "
                           "Serial console tail:\n%s"
                           % (info["name"], info["serial"], serial_tail(info)))
        probe = subprocess.run(ssh_argv(info, "true"), capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return time.monotonic() - started
        time.sleep(2)
    raise LabError("lab VM %s did not answer SSH on 127.0.0.1:%d within %d s (full log: %s). "
                   "Serial console tail:\n%s"
                   % (info["name"], info["port"], BOOT_TIMEOUT, info["serial"], serial_tail(info)))


def start_qemu(info, image_dir):
    Path(info["serial"]).unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(qemu_argv(info, image_dir), check=True)
    try:
        info["boot_seconds"] = round(wait_for_ssh(info, started), 1)
    except LabError:
        kill_qemu(info)
        raise


def boot(name, lsm, iommu, firmware="direct"):
    """Boot lab VM ``name``; ``firmware`` is "direct" (QEMU starts the kernel), "uefi" or
    "uefi-secureboot" (OVMF, then the image's shim and GRUB). reboot() boots it the same way."""
    if firmware not in FIRMWARE:
        raise LabError("unknown firmware %r: one of %s" % (firmware, ", ".join(FIRMWARE)))
    if FIRMWARE[firmware]:
        missing = [OVMF_DIR / FIRMWARE[firmware][part] for part in ("code", "vars")
                   if not (OVMF_DIR / FIRMWARE[firmware][part]).is_file()]
        if missing:
            raise LabError("--firmware %s needs %s: install Debian's ovmf package "
                           "(requirements-apt.txt, scripts/bootstrap)" % (firmware, missing[0]))
    image_dir = build()
    directory = run_dir(name)
    if directory.exists():
        stop(name)
    directory.mkdir(parents=True)
    ssh_port, tls_port, console_port = free_ports(3)
    info = dict(run_files(name), lsm=lsm, iommu=iommu, firmware=firmware, host="127.0.0.1", port=ssh_port,
                tls_port=tls_port, console_port=console_port,
                key=str(image_dir / "id_ed25519"), image=str(image_dir), overlay=str(directory / "disk.qcow2"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", str(image_dir / "base.qcow2"), info["overlay"]], check=True)
    if FIRMWARE[firmware]:
        # the VM's own UEFI variables and ESP, kept across reboots like its disk
        info["efivars"] = str(directory / "efivars.fd")
        shutil.copyfile(OVMF_DIR / FIRMWARE[firmware]["vars"], info["efivars"])
        info["esp"] = str(directory / "esp.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                        "-b", str(image_dir / "esp.img"), info["esp"]], check=True)
    start_qemu(info, image_dir)
    (directory / "vm.json").write_text(json.dumps(info, indent=2))
    return info


def reboot(name):
    info = load_info(name)
    subprocess.run(ssh_argv(info, "systemctl", "poweroff"), capture_output=True, timeout=60,
                   check=False)
    deadline = time.monotonic() + 120
    while qemu_alive(info) and time.monotonic() < deadline:
        time.sleep(1)
    kill_qemu(info)
    start_qemu(info, Path(info["image"]))
    (run_dir(name) / "vm.json").write_text(json.dumps(info, indent=2))
    return info


def kill_qemu(info):
    try:
        pid = int(Path(info["pidfile"]).read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for dummy in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(name):
    kill_qemu(run_files(name))
    shutil.rmtree(run_dir(name), ignore_errors=True)


def run_names():
    return sorted(directory.name for directory in (CACHE / "run").glob("*") if directory.is_dir())


def status():
    """What a failed or hung lab step leaves to read: each VM, whether its QEMU lives, and the
    tail of its serial console (an RCU stall or a panic shows there), booted or still booting."""
    lines = []
    for name in run_names():
        files = run_files(name)
        lines.append("lab VM %s: QEMU %s; serial console %s, last lines:\n%s" % (
            name, "running" if qemu_alive(files) else "not running", files["serial"], serial_tail(files, 15)))
    return "\n".join(lines) or "no lab VM is running"


def prune():
    """Stop every VM and delete the run folders and stale images: a machine that has run the
    suite many times keeps one image and no overlays. Returns the names of the VMs stopped."""
    stopped = [name for name in run_names() if qemu_alive(run_files(name))]
    for name in run_names():
        stop(name)
    prune_images()
    return stopped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "status", "prune"):
        sub.add_parser(command)
    boot_parser = sub.add_parser("boot")
    boot_parser.add_argument("name")
    boot_parser.add_argument("--lsm", choices=sorted(KERNEL_ARGS), default="selinux")
    boot_parser.add_argument("--no-iommu", dest="iommu", action="store_false")
    boot_parser.add_argument("--firmware", choices=list(FIRMWARE), default="direct",
                             help="direct: QEMU starts the kernel (default); uefi: OVMF, shim and "
                                  "GRUB, so update-grub takes effect; uefi-secureboot: the same "
                                  "with Secure Boot")
    for command in ("reboot", "stop", "info"):
        sub.add_parser(command).add_argument("name")
    ssh_parser = sub.add_parser("ssh")
    ssh_parser.add_argument("name")
    ssh_parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build())
        elif args.command == "boot":
            print(json.dumps(boot(args.name, args.lsm, args.iommu, args.firmware), indent=2))
        elif args.command == "reboot":
            print(json.dumps(reboot(args.name), indent=2))
        elif args.command == "stop":
            stop(args.name)
        elif args.command == "status":
            print(status())
        elif args.command == "prune":
            for name in prune():
                print("lab: stopped %s: one lab VM at a time" % name, file=sys.stderr)
        elif args.command == "info":
            print(json.dumps(load_info(args.name), indent=2))
        elif args.command == "ssh":
            return subprocess.run(ssh_argv(load_info(args.name), *args.cmd), check=False).returncode
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print("lab: %s failed with exit code %d" % (exc.cmd[0], exc.returncode), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
