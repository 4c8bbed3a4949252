"""The audit-only kernel checks, over facts shaped like kvm_host_info's (captured on the lab
host and a Debian 12 server)."""

from ansible_collections.kvmsec.hardening.plugins.plugin_utils import _kernel_checks as checks

LAB = {"cpu": {"security_flags": ["pku", "smap", "smep", "umip"]},
       "kernel_cmdline": ["root=/dev/vda", "rw", "console=ttyS0", "security=selinux", "intel_iommu=on"]}


def test_cpu_protections_of_the_lab_host_pass():
    assert checks.cpu_protection_problems(LAB, ["smep", "smap", "umip"], ["nosmap", "clearcpuid"]) == []


def test_dashes_and_underscores_are_the_same_in_kernel_parameter_names():
    facts = dict(LAB, kernel_cmdline=["kvm_intel.vmentry_l1d_flush=never", "clear-cpuid=1"])
    assert checks.cpu_protection_problems(facts, [], ["kvm-intel.vmentry_l1d_flush=never", "clearcpuid"]) == [
        "the running kernel's command line turns protections off: kvm_intel.vmentry_l1d_flush=never "
        "(KVM-KERNEL-04 removes them from the boot loader; they go at the next boot)"]


def test_any_cpu_flag_can_be_required_when_all_flags_are_known():
    facts = {"cpu": {"security_flags": ["smep"], "flags": ["nx", "smep"]}, "kernel_cmdline": []}
    assert checks.cpu_protection_problems(facts, ["nx", "smep"], []) == []


def test_cpu_protections_name_missing_flags_and_forbidden_arguments():
    facts = {"cpu": {"security_flags": ["smep"]},
             "kernel_cmdline": ["root=/dev/sda1", "mitigations=off", "clearcpuid=514", "nosmap"]}
    assert checks.cpu_protection_problems(facts, ["smep", "smap", "umip"], ["mitigations=off", "nosmap", "clearcpuid"]) == [
        "the CPU lacks smap, umip",
        "the running kernel's command line turns protections off: mitigations=off clearcpuid=514 nosmap "
        "(KVM-KERNEL-04 removes them from the boot loader; they go at the next boot)"]


VULNERABILITIES = {
    "spectre_v1": "Mitigation: usercopy/swapgs barriers and __user pointer sanitization",
    "mds": "Vulnerable: Clear CPU buffers attempted, no microcode; SMT Host state unknown",
    "srbds": "Not affected",
    "spec_store_bypass": "Vulnerable",
}


def test_vulnerable_entries_unless_accepted():
    assert checks.vulnerability_problems(VULNERABILITIES) == [
        "mds: Vulnerable: Clear CPU buffers attempted, no microcode; SMT Host state unknown",
        "spec_store_bypass: Vulnerable"]
    assert checks.vulnerability_problems(VULNERABILITIES, ["mds", "spec_store_bypass"]) == []


def test_kernel_config_values_absent_options_and_groups():
    config = {"CONFIG_KVM": "m", "CONFIG_KVM_INTEL": "n", "CONFIG_STRICT_KERNEL_RWX": "y",
              "CONFIG_SECURITY_SELINUX": "y"}
    required = {"CONFIG_KVM": ["y", "m"], "CONFIG_STRICT_KERNEL_RWX": ["y"], "CONFIG_VMAP_STACK": ["y"],
                "CONFIG_DEVMEM": ["n", "absent"]}
    groups = [["CONFIG_KVM_INTEL", "CONFIG_KVM_AMD"], ["CONFIG_SECURITY_SELINUX", "CONFIG_SECURITY_APPARMOR"]]
    assert checks.kernel_config_problems(config, required, groups) == [
        "CONFIG_VMAP_STACK=absent (wanted y)", "none of CONFIG_KVM_INTEL, CONFIG_KVM_AMD is y or m"]


def test_secure_boot_with_lockdown_or_signature_enforcement():
    assert checks.secure_boot_problems({"secure_boot": True, "lockdown": "integrity", "module_sig_enforce": False}) == []
    assert checks.secure_boot_problems({"secure_boot": True, "lockdown": "none", "module_sig_enforce": True}) == []
    unknown = checks.secure_boot_problems({"secure_boot": None, "lockdown": "integrity", "module_sig_enforce": True})
    assert unknown == ["the SecureBoot EFI variable cannot be read (is efivarfs mounted at /sys/firmware/efi/efivars?)"]
    problems = checks.secure_boot_problems({"secure_boot": False, "lockdown": "none", "module_sig_enforce": False})
    assert problems[0].startswith("Secure Boot is off")
    assert "module.sig_enforce is off and kernel lockdown is none" in problems[1]
