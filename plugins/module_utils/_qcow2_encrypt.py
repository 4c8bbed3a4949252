# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LUKS encryption of qcow2 images, done safely. Private to the collection: not a public API.

``decide(run, request, conn)`` is the whole job of the qcow2_encrypt module: inspect the image and
decide what has to change (a ``_runner.Plan``, check mode's answer); its ``apply`` carries it out:
``qemu-img convert`` to a temporary file beside the image, ``qemu-img compare`` of both
images opened with their secrets, owner/mode/SELinux label copied, fsync, atomic rename.

Passphrases reach QEMU only as ``--object secret,file=/dev/fd/N``: a pipe made for that one
command, holding the passphrase, which the command inherits. No file holds a passphrase, on
disk or tmpfs; it is never in argv nor in the result.
While the original is being replaced, a POSIX lock on the byte QEMU uses to announce
"I do not share write access" keeps any QEMU (a guest being started) from opening it for
writing, so no guest write can land in a file that is about to be renamed away.

libvirt is reached through the collection's libvirt layer: ``conn`` is a ``_libvirt.Connection``
(None where the host has no libvirt); nothing here imports libvirt or Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import json
import os
import re
import struct
import time
import xml.etree.ElementTree as ET

from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import copy_attributes, fsync_dir
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import UUID_RE, disks, edited
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"

LOCK_ERROR = re.compile(r'Failed to get (?:shared )?"[^"]+" lock')
WRONG_PASSPHRASE = "Invalid password, cannot unlock any keyslot"
# QEMU's PBKDF2 calibration reads per-thread CPU time; with coarse accounting a short probe
# measures 0 ms and QEMU gives up before writing anything, so an attempt costs milliseconds. On
# the 2-core development machine 1 in 6 attempts fail idle and 3 in 5 with both cores busy
# (measured): 12 attempts failed a CI run on a busy machine, 40 leave odds of 1 in 10^9.
CALIBRATION_ERROR = "Unable to get accurate CPU usage"
CALIBRATION_ATTEMPTS = 40

CIPHER_KEYS = ("cipher_alg", "cipher_mode", "ivgen_alg", "hash_alg")
CIPHER_DEFAULTS = {"cipher_alg": "aes-256", "cipher_mode": "xts", "ivgen_alg": "plain64",
                   "hash_alg": "sha256"}
CIPHER_CHOICES = {
    "cipher_alg": ("aes-128", "aes-192", "aes-256", "serpent-128", "serpent-192", "serpent-256",
                   "twofish-128", "twofish-192", "twofish-256"),
    "cipher_mode": ("xts", "cbc", "ctr"),
    "ivgen_alg": ("plain64", "essiv"),
    "hash_alg": ("sha256", "sha384", "sha512"),
}
DEFAULT_ITER_TIME = 2000

NEW_KEY = "kvmsec_new"
OLD_KEY = "kvmsec_old"
TEMP_MARK = ".kvmsec-encrypt."
# Linux's fcntl to read a pipe's capacity; Python names it only from 3.10
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# QEMU's image locking (block/file-posix.c): a shared lock on byte 200 + permission bit means
# "I do not share this permission"; BLK_PERM_WRITE is bit 1. QEMU refuses write access while
# anyone holds it.
QEMU_UNSHARE_WRITE_BYTE = 201
QCOW2_MAGIC = b"QFI\xfb"
# crypt_method, the big-endian uint32 at byte 32 of a qcow2 header
QCOW2_CRYPT_METHODS = {0: None, 1: "aes", 2: "luks"}
BACKUP_SUFFIX = r"\.[0-9]{4}-[0-9]{2}-[0-9]{2}@[0-9]{2}:[0-9]{2}:[0-9]{2}~$"
BACKUP_STATES = {None: "unencrypted", "aes": "legacy-AES-encrypted (barely protected)",
                 "unknown": "unrecognised (possibly unencrypted)"}
# A sector of random bytes shows ~221 distinct values (sd ~5); real disk data far fewer.
RANDOM_SECTOR_DISTINCT = 190
AES_SAMPLE_EXTENTS = 4
AES_SAMPLE_BYTES = 65536


class Qcow2EncryptError(Exception):
    """A refusal or bad input; the message says what is wrong and how to fix it."""


class ImageInUse(Qcow2EncryptError):
    def __init__(self, message, users):
        super(ImageInUse, self).__init__(message)
        self.users = users
        self.details = {"in_use_by": users}


class Request(object):
    """What the user asked for (``validate`` checks it). Passphrases are bytes."""

    def __init__(self, path, passphrase, state="encrypted", old_passphrase=None, cipher=None,
                 iter_time=DEFAULT_ITER_TIME, backup=True, flatten=False, when_in_use="fail",
                 secret_uuid=None, attach_domains=True):
        self.path = path
        self.passphrase = passphrase
        self.state = state
        self.old_passphrase = old_passphrase
        self.cipher = dict((k, v) for k, v in (cipher or {}).items() if v is not None)
        self.iter_time = iter_time
        self.backup = backup
        self.flatten = flatten
        self.when_in_use = when_in_use
        self.secret_uuid = secret_uuid
        self.attach_domains = attach_domains


def check_uuid(option, value):
    if not UUID_RE.match(value or ""):
        raise Qcow2EncryptError("%s %r is not a UUID: give one such as 6a4f4b7e-7d4c-4a43-9d0e-3c1b1f0d2a10"
                                % (option, value))


def validate(request):
    """Raise Qcow2EncryptError for input that can never work; the host is not touched."""
    if not request.passphrase:
        raise Qcow2EncryptError("the passphrase is empty: give a non-empty passphrase")
    if request.old_passphrase is not None and not request.old_passphrase:
        raise Qcow2EncryptError("old_passphrase is empty: give the passphrase that opens the image now,"
                                " or leave old_passphrase out")
    for key, value in request.cipher.items():
        if value not in CIPHER_CHOICES[key]:
            raise Qcow2EncryptError("%s=%s is not supported; valid: %s"
                                    % (key, value, ", ".join(CIPHER_CHOICES[key])))
    if request.iter_time < 1:
        raise Qcow2EncryptError("iter_time must be a positive number of milliseconds")
    if request.when_in_use not in ("fail", "skip"):
        raise Qcow2EncryptError("when_in_use must be fail or skip")
    if request.secret_uuid:
        check_uuid("libvirt_secret.uuid", request.secret_uuid)


def read_passphrase_file(option, path):
    """The passphrase in a file on the managed host; one trailing newline is not part of it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError) as exc:
        raise Qcow2EncryptError("%s %s cannot be read (%s): give the path of a readable file on the managed"
                                " host that holds the passphrase" % (option, path, exc.strerror or exc))
    data = data[:-1] if data.endswith(b"\n") else data
    if not data:
        raise Qcow2EncryptError("%s %s is empty: the file must hold the passphrase" % (option, path))
    return data


# ---------------------------------------------------------------------------------------------
# secrets through pipes


class SecretRef(str):
    """The ``--object`` argument of one QEMU secret before its value is handed over: it names the
    key and holds no secret, so an argv holding it may be shown in errors."""

    def __new__(cls, key):
        ref = str.__new__(cls, "secret,id=%s" % key)
        ref.key = key
        return ref


def pipe_holding(data):
    """The read end of a pipe that holds ``data`` and has no writer left: a reader gets the data,
    then end of file. The secret never touches a filesystem, not even tmpfs."""
    read_fd, write_fd = os.pipe()
    try:
        # nothing writes once the command runs, so all of it must fit in the pipe's buffer now
        os.set_blocking(write_fd, False)
        try:
            written = os.write(write_fd, data)
        except BlockingIOError:
            written = 0
        capacity = fcntl.fcntl(write_fd, F_GETPIPE_SZ)
    finally:
        os.close(write_fd)
    if written != len(data):
        os.close(read_fd)
        raise Qcow2EncryptError("a passphrase of %d bytes does not fit in this host's pipe buffer (%d bytes),"
                                " through which the module hands it to QEMU: use a shorter passphrase"
                                % (len(data), capacity))
    return read_fd


class Keys(object):
    """The passphrases of one run, by QEMU secret id: the new one and the one opening the source."""

    def __init__(self, passphrase, old_passphrase=None):
        self.values = {NEW_KEY: passphrase}
        self.has_old = old_passphrase is not None and old_passphrase != passphrase
        if self.has_old:
            self.values[OLD_KEY] = old_passphrase
        self.old = OLD_KEY if self.has_old else NEW_KEY
        # a passphrase no pipe can hold must fail check mode too, not only the conversion
        for value in self.values.values():
            os.close(pipe_holding(value))

    def args(self, *ids):
        argv = []
        for key in sorted(set(i for i in ids if i)):
            argv += ["--object", SecretRef(key)]
        return argv

    def runner(self, run):
        """``run`` that gives every command a fresh pipe per secret it names (a pipe can be read
        only once), read by QEMU as ``/dev/fd/N``; commands without secrets run unchanged."""

        def keyed(argv, data=None):
            fds, real = [], []
            try:
                for arg in argv:
                    if isinstance(arg, SecretRef):
                        fds.append(pipe_holding(self.values[arg.key]))
                        arg = "%s,file=/dev/fd/%d,format=raw" % (arg, fds[-1])
                    real.append(arg)
                if not fds:
                    return run(real, data=data)
                return run(real, data=data, pass_fds=fds)
            finally:
                for fd in fds:
                    os.close(fd)

        return keyed


# ---------------------------------------------------------------------------------------------
# qemu-img / qemu-io


def _opt(value):
    """Escape a value inside a QEMU option string (a comma is written twice)."""
    return value.replace(",", ",,")


def image_opts(path, key=None, force_share=False):
    opts = "driver=qcow2,file.driver=file,file.filename=%s" % _opt(path)
    if key:
        opts += ",encrypt.key-secret=" + key
    if force_share:
        opts += ",force-share=on"
    return opts


def describe(info):
    """The facts the module compares and returns, from ``qemu-img info --output=json``."""
    data = (info.get("format-specific") or {}).get("data") or {}
    encrypt = data.get("encrypt") or {}
    encrypted = bool(info.get("encrypted"))
    fmt = encrypt.get("format") if encrypted else None
    cipher = None
    if fmt == "luks":
        cipher = dict((key, encrypt.get(key.replace("_", "-"))) for key in CIPHER_KEYS)
    return {
        "format": info.get("format"),
        "virtual_size": info.get("virtual-size"),
        "actual_size": info.get("actual-size"),
        "cluster_size": info.get("cluster-size"),
        "encrypted": encrypted,
        "encrypt_format": fmt,
        "cipher": cipher,
        "backing_file": info.get("full-backing-filename") or info.get("backing-filename"),
        "data_file": data.get("data-file"),
    }


def inspect(run, path):
    """(facts, locked). Without -U first: a lock error means some process writes the image;
    only then read the metadata with -U, which is safe for a header-only read."""
    argv = [QEMU_IMG, "info", "--output=json", path]
    rc, out, err = run(argv)
    if rc == 0:
        return describe(json.loads(out)), False
    if LOCK_ERROR.search(err or ""):
        out = checked(run, [QEMU_IMG, "info", "--output=json", "-U", path], what="qemu-img info")
        return describe(json.loads(out)), True
    raise Qcow2EncryptError("qemu-img cannot read %s: %s" % (path, (err or out).strip()))


def is_locked(run, path):
    rc, dummy, err = run([QEMU_IMG, "info", "--output=json", path])
    return rc != 0 and bool(LOCK_ERROR.search(err or ""))


def opens(run, path, keys, key, force_share=False):
    """Whether the passphrase behind ``key`` unlocks the LUKS image (QEMU checks a key slot)."""
    opts = image_opts(path, key, force_share)
    argv = [QEMU_IO, "-r"] + keys.args(key) + ["--image-opts", opts, "-c", "info"]
    rc, out, err = run(argv)
    if rc == 0:
        return True
    if WRONG_PASSPHRASE in (err or ""):
        return False
    raise CommandError(argv, rc, out, err, what="qemu-io")


def _hexdump_bytes(text):
    """Bytes from qemu-io ``read -v`` lines: ``00000000:  ab cd ...  |ascii|``."""
    data = bytearray()
    for line in text.splitlines():
        head, sep, rest = line.partition(":  ")
        if not sep or not re.match(r"^[0-9a-f]{8}$", head):
            continue
        for token in rest.split("  ", 1)[0].split():
            data.append(int(token, 16))
    return bytes(data)


def looks_random(data):
    """True when every 512-byte sector of data has as many distinct bytes as random noise."""
    sectors = [data[i:i + 512] for i in range(0, len(data) - 511, 512)]
    return bool(sectors) and all(len(set(bytearray(s))) >= RANDOM_SECTOR_DISTINCT for s in sectors)


def aes_key_plausible(run, path, keys, key):
    """Legacy AES has no key check: a wrong key decrypts to noise. Sample allocated data and
    call the key wrong when every sampled sector looks like random bytes."""
    opts = image_opts(path, key)
    out = checked(run, [QEMU_IMG, "map", "--output=json"] + keys.args(key) + ["--image-opts", opts],
                  what="qemu-img map")
    extents = [e for e in json.loads(out) if e.get("data")][:AES_SAMPLE_EXTENTS]
    commands = []
    for extent in extents:
        commands += ["-c", "read -v %d %d" % (extent["start"], min(extent["length"], AES_SAMPLE_BYTES))]
    if not commands:
        return True
    out = checked(run, [QEMU_IO, "-r"] + keys.args(key) + ["--image-opts", opts] + commands,
                  what="qemu-io")
    return not looks_random(_hexdump_bytes(out))


def run_retrying_calibration(run, argv, what):
    """Run a command that creates a LUKS header, repeating QEMU's spurious calibration failure."""
    for attempt in range(CALIBRATION_ATTEMPTS):
        rc, out, err = run(argv)
        if rc == 0:
            return attempt + 1
        if CALIBRATION_ERROR not in (err or ""):
            raise CommandError(argv, rc, out, err, what=what)
    raise CommandError(argv, rc, out, err + " (QEMU's key-derivation calibration failed %d times in a row)"
                       % CALIBRATION_ATTEMPTS, what=what)


def luks_options(request, cluster_size):
    cipher = dict(CIPHER_DEFAULTS)
    cipher.update(request.cipher)
    opts = ["encrypt.format=luks", "encrypt.key-secret=" + NEW_KEY]
    opts += ["encrypt.%s=%s" % (key.replace("_", "-"), cipher[key]) for key in CIPHER_KEYS]
    opts.append("encrypt.iter-time=%d" % request.iter_time)
    if cluster_size:
        opts.append("cluster_size=%d" % cluster_size)
    return ",".join(opts)


def convert_argv(source, target, keys, source_key, request, cluster_size):
    # QEMU's default 8 coroutines already encrypt in its thread pool; -W and -m 16 measured no
    # better here (docs/benchmarks.md) and -W scatters a qcow2 target's clusters, so neither is used
    return ([QEMU_IMG, "convert"] + keys.args(source_key, NEW_KEY)
            + ["--image-opts", image_opts(source, source_key), "-O", "qcow2",
               "-o", luks_options(request, cluster_size), target])


def compare_argv(source, target, keys, source_key):
    return ([QEMU_IMG, "compare"] + keys.args(source_key, NEW_KEY)
            + ["--image-opts", image_opts(source, source_key), image_opts(target, NEW_KEY)])


# ---------------------------------------------------------------------------------------------
# who uses the image


def overlays_of(path):
    """qcow2 files in the image's directory whose backing file is this image."""
    directory = os.path.dirname(path)
    found = []
    for name in sorted(os.listdir(directory)):
        candidate = os.path.join(directory, name)
        if candidate == path or TEMP_MARK in name or not os.path.isfile(candidate):
            continue
        backing = _qcow2_backing_name(candidate)
        if backing and os.path.realpath(os.path.join(directory, backing)) == path:
            found.append(candidate)
    return found


def _qcow2_backing_name(path):
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if not offset or not size or size > 4096:
                return None
            handle.seek(offset)
            return handle.read(size).decode("utf-8", "replace")
    except (IOError, OSError):
        return None


def holders(path):
    """'PID (COMMAND)' of every process with the file open, read from /proc (root sees all)."""
    found = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        if path in _open_files(pid):
            try:
                with open("/proc/%s/comm" % pid) as handle:
                    found.append("%s (%s)" % (pid, handle.read().strip()))
            except (IOError, OSError):
                continue
    return found


def _open_files(pid):
    fd_dir = "/proc/%s/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except (IOError, OSError):
        return []
    files = []
    for fd in fds:
        try:
            files.append(os.readlink(os.path.join(fd_dir, fd)))
        except (IOError, OSError):
            continue  # closed meanwhile
    return files


def in_use_message(path, guests):
    if guests:
        return "%s is in use by running libvirt guest %s" % (path, ", ".join(guests))
    who = holders(path)
    return "%s is in use: another process holds QEMU's write lock on it%s" % (
        path, " (process %s)" % ", ".join(who) if who else "")


# ---------------------------------------------------------------------------------------------
# libvirt


def names_image(disk, path, chain=False):
    """Whether a ``_libvirt.Disk`` is this image (its real path), or with ``chain`` has it
    anywhere in its backing chain."""
    files = [disk.path] + (disk.backing_files if chain else [])
    return any(name and os.path.realpath(name) == path for name in files)


def encryption_of(disk):
    for parent in (disk, disk.find("source")):
        enc = parent.find("encryption") if parent is not None else None
        if enc is not None:
            secret = enc.find("secret")
            return enc.get("format"), secret.get("uuid") if secret is not None else None
    return None


def with_encryption(domain, path, uuid, standalone):
    """The domain's definition with its disks on this image using LUKS with the secret;
    (xml, targets) or (None, []) when nothing changes. A flattened image (``standalone``) also
    loses a stale <backingStore>."""
    targets = []

    def change(root):
        for disk in disks(root, domain.volume_path):
            if not names_image(disk, path):
                continue
            changed = _set_encryption(disk.element, uuid)
            changed = _drop_backing_store(disk.element) or changed if standalone else changed
            if changed:
                targets.append(disk.target or "?")
        return bool(targets)

    return edited(domain.config_xml, change), targets


def _set_encryption(disk, uuid):
    if encryption_of(disk) == ("luks", uuid):
        return False
    for parent in (disk, disk.find("source")):
        if parent is not None:
            for old in parent.findall("encryption"):
                parent.remove(old)
    enc = ET.SubElement(disk, "encryption", {"format": "luks"})
    ET.SubElement(enc, "secret", {"type": "passphrase", "uuid": uuid})
    return True


def _drop_backing_store(disk):
    store = disk.find("backingStore")
    if store is None or not list(store):
        return False
    disk.remove(store)
    ET.SubElement(disk, "backingStore")
    return True


def secret_xml(uuid, path):
    root = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
    ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "description").text = "kvmsec.hardening: passphrase of %s" % path
    usage = ET.SubElement(root, "usage", {"type": "volume"})
    ET.SubElement(usage, "volume").text = path
    return ET.tostring(root, encoding="unicode")


def secret_matches(xml_text, path):
    root = ET.fromstring(xml_text)
    usage = root.find("usage")
    return (root.get("private") == "yes" and root.get("ephemeral") == "no" and usage is not None
            and usage.get("type") == "volume" and (usage.findtext("volume") or "") == path)


def secret_value(conn, uuid):
    """The passphrase held by the secret passphrase_libvirt_secret names (a checked UUID)."""
    option = "passphrase_libvirt_secret"
    secret = conn.secret(uuid)
    if secret is None:
        raise Qcow2EncryptError("%s %s: libvirt has no secret with this UUID; give the UUID of a defined"
                                " secret that is not private (virsh secret-list)" % (option, uuid))
    if ET.fromstring(secret.XMLDesc(0)).get("private") == "yes":
        raise Qcow2EncryptError("%s %s is a private secret, whose value libvirt never hands out; give"
                                " passphrase or passphrase_file instead, or a secret defined with"
                                " private='no'" % (option, uuid))
    try:
        return secret.value(0)
    except conn.error as exc:
        raise Qcow2EncryptError("%s %s: libvirt cannot give its value (%s); set it with virsh"
                                " secret-set-value" % (option, uuid, exc.get_error_message()))


def defined_secret_xml(conn, uuid):
    secret = conn.secret(uuid)
    return secret.XMLDesc(0) if secret is not None else None


class Usage(object):
    """Which libvirt domains name the image: running ones (in use) and defined ones."""

    def __init__(self, conn, path):
        self.running = []
        self.defined = []
        if conn is None:
            return
        for domain in conn.domains():
            if domain.active and any(names_image(disk, path, chain=True) for disk in domain.disks(live=True)):
                self.running.append(domain.name)
            if domain.persistent and any(names_image(disk, path) for disk in domain.disks()):
                self.defined.append(domain.name)


# ---------------------------------------------------------------------------------------------
# plan


class Conversion(object):
    def __init__(self, reason, source_key):
        self.reason = reason
        self.source_key = source_key


def checked_path(path):
    """The real path of an existing regular file, or a refusal saying what is wrong."""
    if not os.path.isabs(path):
        raise Qcow2EncryptError("path %s is not absolute: give the image's absolute path" % path)
    if not os.path.lexists(path):
        raise Qcow2EncryptError("%s does not exist" % path)
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise Qcow2EncryptError("%s is not a regular file: only qcow2 image files can be encrypted" % path)
    return real


def refuse_unsupported(path, facts):
    if facts["format"] != "qcow2":
        raise Qcow2EncryptError(
            "%s is a %s image, not qcow2: convert it first (qemu-img convert -O qcow2) and point the"
            " guest at the new file" % (path, facts["format"]))
    if facts["data_file"]:
        raise Qcow2EncryptError("%s keeps its data in an external file (%s), which LUKS in qcow2 cannot"
                                " cover" % (path, facts["data_file"]))
    if facts["encrypt_format"] not in (None, "luks", "aes"):
        raise Qcow2EncryptError("%s uses unknown encryption %r" % (path, facts["encrypt_format"]))


def refuse_unsafe_conversion(path, real, facts, request):
    """A conversion must never leave plaintext behind a backing file or break another image."""
    if facts["backing_file"] and not request.flatten:
        raise Qcow2EncryptError(
            "%s has a backing file (%s): encrypting only this layer would leave the backing file's"
            " data in plaintext. Set flatten=true to write one standalone encrypted image holding the"
            " whole chain (the backing file itself is left unchanged)" % (path, facts["backing_file"]))
    overlays = overlays_of(real)
    if overlays:
        raise Qcow2EncryptError(
            "%s is the backing file of %s: encrypting it would break them. Encrypt those with"
            " flatten=true first" % (path, ", ".join(overlays)))


def cipher_mismatch(current, wanted):
    diffs = ["%s %s->%s" % (k, current.get(k), v) for k, v in sorted(wanted.items()) if current.get(k) != v]
    return ", ".join(diffs)


def conversion_needed(run, path, facts, request, keys, share):
    """None when the image already is what was asked; else why and with which key to read it."""
    fmt = facts["encrypt_format"]
    if fmt is None:
        return Conversion("encrypt the plain image with LUKS", None)
    if fmt == "aes":
        if not aes_key_plausible(run, path, keys, keys.old):
            raise Qcow2EncryptError(
                "%s is encrypted with legacy qcow2 AES and the %s decrypts it to random bytes: it is"
                " most likely the wrong passphrase (legacy AES cannot tell). Give the right old_passphrase"
                % (path, "old passphrase" if keys.has_old else "passphrase"))
        return Conversion("re-encrypt the legacy AES image with LUKS", keys.old)
    if opens(run, path, keys, NEW_KEY, share):
        mismatch = cipher_mismatch(facts["cipher"], request.cipher)
        return Conversion("re-encrypt with another cipher (%s)" % mismatch, NEW_KEY) if mismatch else None
    if keys.has_old and opens(run, path, keys, OLD_KEY, share):
        return Conversion("re-encrypt with the new passphrase", OLD_KEY)
    raise Qcow2EncryptError("the passphrase does not open the LUKS-encrypted image %s%s" % (
        path, "" if keys.has_old else "; if it was encrypted with another passphrase, give that one as"
        " old_passphrase to re-encrypt"))


def verify(run, path, facts, keys, share):
    fmt = facts["encrypt_format"]
    if fmt is None:
        raise Qcow2EncryptError("%s is not encrypted: use state=encrypted to encrypt it" % path)
    if fmt == "aes":
        raise Qcow2EncryptError("%s uses legacy qcow2 AES encryption, which is broken and cannot be"
                                " verified: use state=encrypted to re-encrypt it with LUKS" % path)
    if not opens(run, path, keys, NEW_KEY, share):
        raise Qcow2EncryptError("the passphrase does not open the LUKS-encrypted image %s" % path)


def libvirt_changes(conn, path, request, standalone, converted):
    """What libvirt needs so guests open the image unattended: [(description, action)]."""
    if conn is None or not request.secret_uuid:
        return []
    changes = []
    uuid = request.secret_uuid
    current = defined_secret_xml(conn, uuid)
    if current is None or not secret_matches(current, path) or converted:
        what = "define" if current is None else "update"
        changes.append(("%s private libvirt secret %s for %s" % (what, uuid, path),
                        lambda: conn.define_secret(secret_xml(uuid, path), request.passphrase)))
    if request.attach_domains:
        for domain in conn.domains():
            if not domain.persistent:
                continue
            new_xml, targets = with_encryption(domain, path, uuid, standalone)
            if new_xml:
                changes.append(("use secret %s for disk %s of guest %s" % (uuid, ", ".join(targets), domain.name),
                                _definer(conn, new_xml)))
    return changes


def _definer(conn, xml_text):
    return lambda: conn.define(xml_text)


# ---------------------------------------------------------------------------------------------
# apply


def temp_path(path):
    return os.path.join(os.path.dirname(path), ".%s%s%d~" % (os.path.basename(path), TEMP_MARK, os.getpid()))


def _pid_alive(pid):
    return os.path.exists("/proc/%d" % pid)


def leftover_temps(path):
    """Temporary files of earlier runs that died (SIGKILL, power loss); refuse while another
    live run is converting the same image."""
    directory, base = os.path.split(path)
    prefix = ".%s%s" % (base, TEMP_MARK)
    found = []
    for name in sorted(os.listdir(directory)):
        pid = name[len(prefix):-1] if name.startswith(prefix) and name.endswith("~") else ""
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _pid_alive(int(pid)):
            raise Qcow2EncryptError("another run (process %s) is converting %s right now" % (pid, path))
        found.append(os.path.join(directory, name))
    return found


class WriteBarrier(object):
    """Hold QEMU's 'write not shared' lock byte on the original while it is replaced."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, QEMU_UNSHARE_WRITE_BYTE, os.SEEK_SET)
        except (IOError, OSError) as exc:
            os.close(self.fd)
            raise Qcow2EncryptError("cannot lock %s against writers: %s" % (self.path, exc))
        return self

    def __exit__(self, *exc_info):
        os.close(self.fd)
        return False

    def same_file(self):
        mine, now = os.fstat(self.fd), os.stat(self.path)
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def backup_name(path):
    return "%s.%s~" % (path, time.strftime("%Y-%m-%d@%H:%M:%S"))


class Backup(object):
    """An original the module kept beside the image (``PATH.DATE@TIME~``).

    ``stale``: it is a second name of the image itself. Only a run killed between making the
    backup (a hard link) and the rename leaves that: the conversion never happened, and removing
    the link loses nothing.
    """

    def __init__(self, path, encryption, stale):
        self.path = path
        self.encryption = encryption
        self.stale = stale

    @property
    def plaintext(self):
        # legacy AES counts: its key is the password itself, with no key derivation
        return self.encryption != "luks"


def _encryption_in_header(path):
    """None (plain), 'aes' or 'luks' from the qcow2 header; 'unknown' for anything else."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(36)
    except (IOError, OSError):
        return "unknown"
    if len(header) < 36 or header[:4] != QCOW2_MAGIC:
        return "unknown"
    return QCOW2_CRYPT_METHODS.get(struct.unpack(">I", header[32:36])[0], "unknown")


def backups_of(path):
    """Every backup of the image in its directory, oldest first, found by name: whatever run
    made it, finished or killed, so each run can report (or remove) it."""
    directory, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + BACKUP_SUFFIX)
    image = os.stat(path)
    found = []
    for name in sorted(os.listdir(directory)):
        candidate = os.path.join(directory, name)
        if not pattern.match(name) or os.path.islink(candidate) or not os.path.isfile(candidate):
            continue
        mine = os.stat(candidate)
        found.append(Backup(candidate, _encryption_in_header(candidate),
                            (mine.st_dev, mine.st_ino) == (image.st_dev, image.st_ino)))
    return found


def backup_warning(image, backup):
    if backup.stale:
        return ("%s is a second name of the unconverted image %s, left by a run killed before its rename:"
                " the next run that converts the image removes it" % (backup.path, image))
    return ("the %s original of %s is kept as %s: delete it once the guest runs from the encrypted image"
            % (BACKUP_STATES[backup.encryption], image, backup.path))


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def convert(run, path, facts, conversion, request, keys, still_free):
    """Replace the image by an encrypted copy; return the backup path (or None).

    ``still_free()`` raises ImageInUse if a guest took the image meanwhile; it runs once the
    write barrier is held, so nothing can start writing to the original after it answered.
    """
    temp = temp_path(path)
    backup = None
    renamed = False
    with WriteBarrier(path) as barrier:
        still_free()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            run_retrying_calibration(run, convert_argv(path, temp, keys, conversion.source_key, request,
                                                       facts["cluster_size"]), "qemu-img convert")
            checked(run, compare_argv(path, temp, keys, conversion.source_key), what="qemu-img compare")
            copy_attributes(path, temp)
            fsync_dir(temp)  # opens any path read-only and fsyncs it: the file's data this time
            if not barrier.same_file():
                raise Qcow2EncryptError("%s was replaced while it was being encrypted; nothing changed" % path)
            if request.backup:
                backup = backup_name(path)
                os.link(path, backup)
            os.rename(temp, path)
            renamed = True
            fsync_dir(os.path.dirname(path))
        finally:
            if not renamed:
                _unlink_quietly(temp)
                if backup:
                    _unlink_quietly(backup)
    return backup


# ---------------------------------------------------------------------------------------------
# the module's job


def public(facts):
    return dict((k, facts[k]) for k in ("format", "encrypted", "encrypt_format", "cipher",
                                        "virtual_size", "backing_file"))


def decide(run, request, conn=None):
    """Inspect the image and decide: a ``_runner.Plan`` whose result is what check mode answers,
    and whose ``apply`` converts, updates libvirt and returns the result as the image is after
    (never a secret)."""
    validate(request)
    path = checked_path(request.path)
    keys = Keys(request.passphrase, request.old_passphrase)
    return _plan(keys.runner(run), path, request, conn, keys)


def _plan(run, path, request, conn, keys):
    facts, locked = inspect(run, path)
    refuse_unsupported(request.path, facts)
    usage = Usage(conn, path)
    backups = backups_of(path)
    result = {"path": request.path, "backup_file": None, "in_use_by": usage.running,
              "changes": [], "skipped_changes": [], "warnings": [], "libvirt_secret": request.secret_uuid}
    share = locked or bool(usage.running)
    if request.state == "verified":
        verify(run, path, facts, keys, share)
        return _unchanged(result, facts, backups)
    conversion = conversion_needed(run, path, facts, request, keys, share)
    if conversion:
        refuse_unsafe_conversion(request.path, path, facts, request)
    if conversion and (locked or usage.running):
        message = in_use_message(request.path, usage.running)
        if request.when_in_use == "fail":
            raise ImageInUse(message + "; stop it first", usage.running)
        result["warnings"] = [message + ": skipped, the image stays as it is"]
        result["skipped_changes"] = [conversion.reason]
        return _unchanged(result, facts, backups)
    after = _planned_facts(facts, request) if conversion else facts
    leftovers = leftover_temps(path) + [b.path for b in backups if b.stale]
    libvirt = libvirt_changes(conn, path, request, not after["backing_file"], bool(conversion))
    result["changes"] = ([conversion.reason] if conversion else []) + [
        "remove %s, left by an interrupted run" % t for t in leftovers] + [d for d, dummy in libvirt]
    diff = {"before": _diff_view(facts, conn, path, request, False),
            "after": _diff_view(after, conn, path, request, bool(libvirt))}

    def apply():
        applied = dict(result)
        now = after
        for leftover in leftovers:
            _unlink_quietly(leftover)
        if conversion:
            applied["backup_file"] = convert(run, path, facts, conversion, request, keys,
                                             _still_free(run, path, conn))
            now = inspect(run, path)[0]
        for dummy, action in libvirt:
            action()
        applied = _finished(applied, now, backups_of(path), request, usage)
        decided.warnings = applied.pop("warnings")
        return applied

    # check mode's answer: the stale backups are gone once the plan is applied
    predicted = _finished(result, after, [b for b in backups if not b.stale], request, usage)
    warnings = predicted.pop("warnings")
    decided = Plan(bool(result["changes"]), predicted, diff, warnings, apply if result["changes"] else None)
    return decided


def _finished(result, facts, backups, request, usage):
    """The result with the image's facts, its plaintext backups and the warnings they call for."""
    done = _with_backups(dict(result, **public(facts)), backups)
    done["warnings"] = done["warnings"] + _warnings(request, done, usage)
    return done


def _unchanged(result, facts, backups):
    done = _with_backups(dict(result, **public(facts)), backups)
    warnings = done.pop("warnings")
    return Plan(False, done, {"before": public(facts), "after": public(facts)}, warnings)


def _with_backups(result, backups):
    """Every run names the plaintext backups beside the image, whichever run left them."""
    plaintext = [b for b in backups if b.plaintext]
    return dict(result, plaintext_backups=[b.path for b in plaintext],
                warnings=result["warnings"] + [backup_warning(result["path"], b) for b in plaintext])


def _still_free(run, path, conn):
    def check():
        running = Usage(conn, path).running
        if running or is_locked(run, path):
            raise ImageInUse(in_use_message(path, running) + "; stop it first", running)
    return check


def _planned_facts(facts, request):
    cipher = dict(CIPHER_DEFAULTS)
    cipher.update(request.cipher)
    after = dict(facts)
    after.update({"encrypted": True, "encrypt_format": "luks", "cipher": cipher, "backing_file": None})
    return after


def guest_disks(conn, path):
    """{guest: encryption of its disks on this image} from the persistent definitions."""
    view = {}
    for domain in conn.domains():
        if not domain.persistent:
            continue
        for disk in domain.disks():
            if names_image(disk, path):
                enc = encryption_of(disk.element)
                view[domain.name] = "%s secret %s" % enc if enc else "no encryption"
    return view


def _diff_view(facts, conn, path, request, libvirt_applied):
    view = public(facts)
    if conn is None or not request.secret_uuid:
        return view
    uuid = request.secret_uuid
    defined = conn.secret(uuid) is not None
    view["libvirt_secret"] = uuid if defined or libvirt_applied else None
    guests = guest_disks(conn, path)
    if libvirt_applied and request.attach_domains:
        guests = dict((name, "luks secret %s" % uuid) for name in guests)
    view["guests"] = guests
    return view


def _warnings(request, result, usage):
    warnings = []
    if result["backup_file"] and result["backup_file"] not in result["plaintext_backups"]:
        warnings.append("the original of %s, still LUKS-encrypted as it was, is kept as %s: delete it once the"
                        " guest runs from the re-encrypted image" % (request.path, result["backup_file"]))
    if result["changes"] and usage.defined and not request.secret_uuid:
        warnings.append("libvirt guest(s) %s use %s and need <encryption format='luks'> with a libvirt"
                        " secret to start: set libvirt_secret" % (", ".join(usage.defined), request.path))
    return warnings
