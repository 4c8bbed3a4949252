#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: qcow2_encrypt
short_description: LUKS-encrypt qcow2 guest images safely, and let libvirt open them unattended
version_added: 0.1.0
description:
  - Ensures a qcow2 image is encrypted with LUKS inside qcow2 (C(encrypt.format=luks)). A plain
    image, or one with the broken legacy qcow2 AES encryption, is converted; an image that already
    is LUKS-encrypted with the given passphrase (and cipher, when one is set) is left alone.
  - The conversion writes a temporary file beside the image with C(qemu-img convert), checks with
    C(qemu-img compare), both images opened with their secrets, that it holds the same data, gives it
    the original's owner, mode and SELinux label, flushes it to disk and renames it over the original.
    On any failure the original is untouched and the temporary file is removed; a run killed outright
    leaves a temporary file that the next run removes.
  - Every run looks for backups of the image (C(PATH.DATE@TIME~), see O(backup)), whichever run made
    them, returns those that hold the data unencrypted in RV(plaintext_backups) and warns about each. A
    backup that is still a second name of the image itself is what a run killed between making the
    backup and the rename leaves (the image was never converted); the next run removes it.
  - While the original is being replaced the module holds the lock byte QEMU checks before it opens an
    image for writing, so a guest that starts meanwhile cannot write into the file being replaced.
  - Refuses an image in use by a running libvirt guest (the message names it) or by any process holding
    QEMU's write lock on it, or with O(when_in_use=skip) leaves it as it is with a warning.
  - The passphrase reaches QEMU only through a C(secret) object reading C(/dev/fd/N), a pipe made for
    that one command and inherited by it. No file ever holds the passphrase, on disk or on tmpfs (which
    C(/run) is not on hosts without systemd); it is never on a command line, in the result or in logs.
    A passphrase must fit in the host's pipe buffer (64 KiB on Linux).
  - QEMU's key-derivation calibration fails now and then with C(Unable to get accurate CPU usage) on
    hosts with coarse CPU accounting; the module repeats the conversion when that happens.
  - With O(libvirt_secret), also defines a private, persistent libvirt secret holding the passphrase and
    adds C(<encryption format='luks'>) referencing it to the disk of every libvirt guest defined with
    this image, so those guests start without a prompt.
author: kvmsec.hardening developers (@kvmsec)
options:
  path:
    description:
      - Absolute path of the qcow2 image. A symbolic link is followed; the file it points to is replaced.
    type: path
    required: true
  state:
    description:
      - V(encrypted) converts the image when needed.
      - V(verified) only checks that the image is LUKS-encrypted and that the passphrase opens it; it never
        changes anything.
    type: str
    choices: [encrypted, verified]
    default: encrypted
  passphrase:
    description:
      - The passphrase the image is (to be) encrypted with. Keep it in Ansible Vault.
      - Exactly one of O(passphrase), O(passphrase_file) and O(passphrase_libvirt_secret) is required.
    type: str
  passphrase_file:
    description:
      - A file on the managed host holding the passphrase. One trailing newline is not part of it.
      - The module reads it itself; QEMU never opens it.
    type: path
  passphrase_libvirt_secret:
    description:
      - UUID of an existing libvirt secret to read the passphrase from. The secret must not be private,
        since libvirt never hands out a private secret's value.
    type: str
  old_passphrase:
    description:
      - The passphrase that opens the image now, when it differs from O(passphrase) - a legacy AES image
        encrypted with another password, or a LUKS image to re-encrypt with a new passphrase.
      - Only the first 16 bytes of a legacy AES password ever mattered to QEMU.
    type: str
  old_passphrase_file:
    description:
      - A file on the managed host holding O(old_passphrase). One trailing newline is not part of it.
    type: path
  cipher_alg:
    description:
      - Cipher of the LUKS encryption. New encryptions use V(aes-256) when this is not set.
      - When set, an image already encrypted with another cipher is re-encrypted. When not set, an
        existing LUKS image is accepted whatever its cipher.
    type: str
    choices: [aes-128, aes-192, aes-256, serpent-128, serpent-192, serpent-256, twofish-128, twofish-192,
              twofish-256]
  cipher_mode:
    description:
      - Block cipher mode. New encryptions use V(xts) when this is not set; same rules as O(cipher_alg).
    type: str
    choices: [xts, cbc, ctr]
  ivgen_alg:
    description:
      - Initialization vector generator. New encryptions use V(plain64) when this is not set; same rules
        as O(cipher_alg).
    type: str
    choices: [plain64, essiv]
  hash_alg:
    description:
      - Hash of the key derivation (PBKDF2). New encryptions use V(sha256) when this is not set; same rules
        as O(cipher_alg).
    type: str
    choices: [sha256, sha384, sha512]
  iter_time:
    description:
      - Milliseconds of key derivation QEMU calibrates the key slot to; every unlock costs about this much
        CPU time, and so does every guess of an attacker. Applies to new encryptions only.
    type: int
    default: 2000
  backup:
    description:
      - Keep the original (unencrypted or legacy AES) image as C(PATH.DATE@TIME~), returned as RV(backup_file).
        It still holds the data in plaintext, so delete it once the guest runs from the encrypted image.
        Until then every run lists it in RV(plaintext_backups) and warns.
    type: bool
    default: true
  flatten:
    description:
      - An image with a backing file is refused by default, because encrypting only its top layer would
        leave the backing file's data in plaintext.
      - V(true) writes one standalone encrypted image holding the data of the whole backing chain; the
        backing file itself is not changed and is no longer used by this image.
      - An image that is itself the backing file of another qcow2 image in its directory is always
        refused (encrypting it would break those overlays); flatten or encrypt the overlays first.
    type: bool
    default: false
  when_in_use:
    description:
      - What to do when the image needs converting but a running guest or another process uses it.
      - V(fail) fails naming the guest; V(skip) leaves the image unchanged, warns, and returns the
        pending change in RV(skipped_changes).
    type: str
    choices: [fail, skip]
    default: fail
  libvirt_secret:
    description:
      - Make libvirt able to open the encrypted image without a prompt.
    type: dict
    suboptions:
      uuid:
        description:
          - UUID of the private, persistent libvirt secret (usage type C(volume), usage ID the image's
            path) that holds the passphrase. It is defined when missing; its value is set when it is
            defined or when the image is converted. libvirt never reveals a private secret's value, so a
            value changed behind the module's back is not detected.
        type: str
        required: true
      attach_domains:
        description:
          - Add C(<encryption format='luks'><secret type='passphrase' uuid='UUID'/></encryption>) to the
            disk of every libvirt guest whose persistent definition uses this image. A guest definition
            is changed only once the image is LUKS-encrypted, so no guest is pointed at a plain image.
        type: bool
        default: true
attributes:
  check_mode:
    support: full
    description: Check mode inspects the image, checks the passphrase and reports the changes it would make.
  diff_mode:
    support: full
    description: The diff shows format, encryption, cipher, backing file, the libvirt secret and the guests'
      disk encryption before and after.
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - kvmsec.hardening.libvirt
notes:
  - O(uri) is the libvirt connection used to find guests using the image, to read
    O(passphrase_libvirt_secret) and to apply O(libvirt_secret). An empty string means no
    libvirt on this host; use is then detected through QEMU's image locks only.
  - Needs C(qemu-img) and C(qemu-io) on the managed host, and libvirt-python for the libvirt features.
    When the module's Python lacks libvirt-python, the module re-runs itself under the system Python.
  - Enough free space beside the image for a second copy of its data is needed while converting.
  - qcow2 LUKS encrypts the data, not the image's allocation map; which clusters are in use stays visible.
  - A legacy AES image cannot tell a wrong password; the module samples the decrypted data and refuses
    when it looks like random bytes.
seealso:
  - name: QEMU disk image encryption
    description: qcow2 LUKS options in the qemu-img manual.
    link: https://www.qemu.org/docs/master/system/images.html
requirements:
  - qemu-img and qemu-io (Debian C(qemu-utils), EL C(qemu-img))
  - libvirt-python, unless O(uri) is empty
"""

EXAMPLES = r"""
- name: Encrypt a guest image and let its guest start unattended
  kvmsec.hardening.qcow2_encrypt:
    path: /var/lib/libvirt/images/web01.qcow2
    passphrase: "{{ vault_web01_image_passphrase }}"
    libvirt_secret:
      uuid: "{{ 'web01.qcow2' | ansible.builtin.to_uuid }}"
  register: web01_image

- name: Re-encrypt a legacy AES image, leaving it alone while its guest runs
  kvmsec.hardening.qcow2_encrypt:
    path: /srv/vm/legacy.qcow2
    passphrase: "{{ vault_legacy_new_passphrase }}"
    old_passphrase: "{{ vault_legacy_aes_password }}"
    when_in_use: skip

- name: Check that the passphrase still opens an encrypted image
  kvmsec.hardening.qcow2_encrypt:
    path: /var/lib/libvirt/images/web01.qcow2
    passphrase_file: /root/keys/web01
    state: verified
"""

RETURN = r"""
path:
  description: The image's path, as given.
  returned: always
  type: str
  sample: /var/lib/libvirt/images/web01.qcow2
format:
  description: Image format.
  returned: always
  type: str
  sample: qcow2
encrypted:
  description: Whether the image is encrypted (after the run).
  returned: always
  type: bool
encrypt_format:
  description: C(luks), C(aes) (legacy) or null.
  returned: always
  type: str
  sample: luks
cipher:
  description: LUKS cipher settings, null when the image is not LUKS-encrypted.
  returned: always
  type: dict
  sample: {"cipher_alg": "aes-256", "cipher_mode": "xts", "ivgen_alg": "plain64", "hash_alg": "sha256"}
virtual_size:
  description: Virtual size in bytes.
  returned: always
  type: int
  sample: 10737418240
backing_file:
  description: The image's backing file, null for a standalone image.
  returned: always
  type: str
backup_file:
  description: Where the original image was kept, when it was converted with O(backup=true).
  returned: always
  type: str
  sample: /var/lib/libvirt/images/web01.qcow2.2025-01-31@10:12:55~
in_use_by:
  description: Running libvirt guests using the image.
  returned: always
  type: list
  elements: str
changes:
  description: What was changed (in check mode, what would be).
  returned: always
  type: list
  elements: str
  sample: ["encrypt the plain image with LUKS"]
skipped_changes:
  description: Changes left undone because the image is in use (O(when_in_use=skip)).
  returned: always
  type: list
  elements: str
libvirt_secret:
  description: UUID of the libvirt secret holding the passphrase, when O(libvirt_secret) was given.
  returned: always
  type: str
plaintext_backups:
  description:
    - Backups of the image beside it (C(PATH.DATE@TIME~)) that hold its data unencrypted or with the legacy
      qcow2 AES encryption, after the run (in check mode, those the run would leave), whichever run made
      them. Each is also named in a warning. Delete them once the guest runs from the encrypted image.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web01.qcow2.2025-01-31@10:12:55~]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes
from ansible_collections.kvmsec.hardening.plugins.module_utils import _qcow2_encrypt as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import libvirt_connection, libvirt_errors
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run

CIPHER_OPTIONS = dict((key, dict(type="str", choices=list(core.CIPHER_CHOICES[key]))) for key in core.CIPHER_KEYS)


def argument_spec():
    spec = dict(
        path=dict(type="path", required=True),
        state=dict(type="str", choices=["encrypted", "verified"], default="encrypted"),
        passphrase=dict(type="str", no_log=True),
        passphrase_file=dict(type="path", no_log=False),
        passphrase_libvirt_secret=dict(type="str", no_log=False),
        old_passphrase=dict(type="str", no_log=True),
        old_passphrase_file=dict(type="path", no_log=False),
        iter_time=dict(type="int", default=core.DEFAULT_ITER_TIME),
        backup=dict(type="bool", default=True),
        flatten=dict(type="bool", default=False),
        when_in_use=dict(type="str", choices=["fail", "skip"], default="fail"),
        libvirt_secret=dict(type="dict", no_log=False, options=dict(
            uuid=dict(type="str", required=True),
            attach_domains=dict(type="bool", default=True),
        )),
    )
    spec.update(CIPHER_OPTIONS)
    spec.update(URI_SPEC)
    return spec


def libvirt_conn(module):
    """The libvirt connection; None when uri is empty."""
    uri = module.params["uri"]
    if not uri:
        if module.params["passphrase_libvirt_secret"] or module.params["libvirt_secret"]:
            module.fail_json(msg="passphrase_libvirt_secret and libvirt_secret need libvirt: set uri")
        return None
    return libvirt_connection(module, uri, reason="to find guests using the image",
                              hint=", or set uri to an empty string to rely on QEMU's image locks alone")


def passphrases(module):
    """(new, old) from the options and files; new is None when a libvirt secret holds it."""
    params = module.params
    new = old = None
    if params["passphrase_file"]:
        new = core.read_passphrase_file("passphrase_file", params["passphrase_file"])
    elif params["passphrase"] is not None:
        new = to_bytes(params["passphrase"], errors="surrogate_or_strict")
    else:
        core.check_uuid("passphrase_libvirt_secret", params["passphrase_libvirt_secret"])
    if params["old_passphrase_file"]:
        old = core.read_passphrase_file("old_passphrase_file", params["old_passphrase_file"])
    elif params["old_passphrase"] is not None:
        old = to_bytes(params["old_passphrase"], errors="surrogate_or_strict")
    hide(module, new, old)
    return new, old


def hide(module, *secrets):
    """Passphrases read from files or libvirt are no option values: tell Ansible to mask them."""
    for secret in secrets:
        if secret:
            module.no_log_values.add(secret.decode("utf-8", "replace"))


def request(module, new, old):
    params = module.params
    secret = params["libvirt_secret"] or {}
    return core.Request(
        path=params["path"], passphrase=new, state=params["state"], old_passphrase=old,
        cipher=dict((key, params[key]) for key in core.CIPHER_KEYS), iter_time=params["iter_time"],
        backup=params["backup"], flatten=params["flatten"], when_in_use=params["when_in_use"],
        secret_uuid=secret.get("uuid"), attach_domains=secret.get("attach_domains", True))


def decide(module):
    # what is wrong with the input is said before anything about libvirt
    new, old = passphrases(module)
    conn = libvirt_conn(module)
    if module.params["passphrase_libvirt_secret"]:
        new = core.secret_value(conn, module.params["passphrase_libvirt_secret"])
        hide(module, new)
    return core.decide(module_runner(module), request(module, new, old), conn)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[["passphrase", "passphrase_file", "passphrase_libvirt_secret"],
                            ["old_passphrase", "old_passphrase_file"]],
        required_one_of=[["passphrase", "passphrase_file", "passphrase_libvirt_secret"]],
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.Qcow2EncryptError, CommandError, IOError, OSError) + libvirt_errors(),
        "qcow2_encrypt")


if __name__ == "__main__":
    main()
