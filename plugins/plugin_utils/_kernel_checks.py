# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit-only kernel controls: what kvm_host_info found, compared with the baseline. Each
function returns the problems, one sentence each, empty when the host meets the control; the
role's verdict task fails with them. Private to the collection: not a public API.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.kvmsec.hardening.plugins.module_utils._kernel_arguments import unmet


def cpu_protection_problems(facts, required_flags, forbidden_arguments):
    """KVM-CPU-01: CPU flags missing, and running kernel arguments that turn a protection off
    (KEY=VALUE that value, KEY every value, as kernel_arguments removes them)."""
    problems = []
    cpu = facts.get("cpu", {})
    flags = cpu.get("flags") or cpu.get("security_flags", [])
    missing = [flag for flag in required_flags if flag not in flags]
    if missing:
        problems.append("the CPU lacks %s" % ", ".join(missing))
    found = unmet(facts.get("kernel_cmdline", []), [], forbidden_arguments)[1]
    if found:
        problems.append("the running kernel's command line turns protections off: %s (KVM-KERNEL-04 removes "
                        "them from the boot loader; they go at the next boot)" % " ".join(found))
    return problems


def vulnerability_problems(vulnerabilities, accepted=()):
    """KVM-CPU-02: entries of /sys/devices/system/cpu/vulnerabilities that say Vulnerable."""
    return ["%s: %s" % (name, vulnerabilities[name]) for name in sorted(vulnerabilities)
            if vulnerabilities[name].startswith("Vulnerable") and name not in accepted]


def kernel_config_problems(config, required, required_any=()):
    """KVM-KERNEL-03: options with a value not allowed (absent counts as the value "absent"),
    and groups of which no option is built in or a module."""
    problems = []
    for name in sorted(required):
        value = config.get(name, "absent")
        allowed = [str(item) for item in required[name]]
        if value not in allowed:
            problems.append("%s=%s (wanted %s)" % (name, value, " or ".join(allowed)))
    for group in required_any:
        if not any(config.get(name) in ("y", "m") for name in group):
            problems.append("none of %s is y or m" % ", ".join(group))
    return problems


def secure_boot_problems(facts):
    """KVM-BOOT-01 on a UEFI host: Secure Boot off, or unsigned modules accepted."""
    problems = []
    if facts.get("secure_boot") is None:
        problems.append("the SecureBoot EFI variable cannot be read (is efivarfs mounted at "
                        "/sys/firmware/efi/efivars?)")
    elif not facts["secure_boot"]:
        problems.append("Secure Boot is off (turn it on in the firmware: the distribution's signed shim boots then)")
    if not facts.get("module_sig_enforce") and facts.get("lockdown") not in ("integrity", "confidentiality"):
        problems.append("unsigned kernel modules load (module.sig_enforce is off and kernel lockdown is %s: "
                        "add module.sig_enforce=1 or lockdown=integrity to the kernel command line)"
                        % (facts.get("lockdown") or "unavailable"))
    return problems
