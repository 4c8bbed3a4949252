"""Unit tests of the selinux_module core, without Ansible.

Real here: checkmodule, semodule_package and policycoreutils' hll/pp converter (the
development machine has them), so sources really compile and checksums are the real ones; the
expected checksums below were read from ``semodule --list-modules=full --checksum`` in the
SELinux lab VM after installing the same sources.

Faked, at the process boundary: ``semodule`` itself. The development machine has no policy
store (no SELinux policy is installed and its kernel has no SELinux), so FakeSemodule keeps an
in-memory store with libsemanage's transaction rule (every operation of one command commits
together or not at all) and computes checksums with the real converter. The lab tests
(tests/integration/on_lab_vm/test_selinux_lab.py) run the real semodule.
"""

import bz2
import copy
import ctypes
import ctypes.util
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _selinux_module as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "data" / "selinux_module"
SEMODULE = "/usr/sbin/semodule"
CONVERTER = next((p for p in core.PP_CONVERTERS if os.access(p, os.X_OK)), None)
TOOLS = core.Tools(SEMODULE, checkmodule="/usr/bin/checkmodule",
                   semodule_package="/usr/bin/semodule_package", pp_converter=CONVERTER)
MLS = core.Host("default", True)

# checksums semodule printed in the lab for these exact sources (Debian 12, MCS policy)
LIBVIRT_SHA256 = "1db4507b92be48752aff526187f5f2ab1d968f6a25a06f2bbd4aaf1d9198becf"
CIL_SOURCE = "(allow virtd_t self (capability2 (wake_alarm)))\n"
CIL_SHA256 = "67c4853edaea7bbafb296b26fd9dd98eae3b781381d807861d0082c88ee7848d"


def te(name, rule="allow virtd_t self:capability2 perfmon;", version="1.0"):
    return ("module %s %s;\nrequire {\n\ttype virtd_t;\n\tclass capability2 { perfmon wake_alarm };\n}\n%s\n"
            % (name, version, rule))


class FakeSemodule(object):
    """semodule over an in-memory store; every other program runs for real."""

    def __init__(self, real_run, checksum_option=True):
        self.real_run = real_run
        self.checksum_option = checksum_option
        self.store = {}            # name -> {priority: {"lang": .., "sha256": ..}}
        self.disabled = set()
        self.commits = 0
        self.transactions = []
        self.broken = set()        # module names whose install fails at link time

    def __call__(self, argv, data=None):
        if argv[0] != SEMODULE:
            return self.real_run(argv, data)
        if argv[1].startswith("--list-modules"):
            if "--checksum" in argv and not self.checksum_option:
                return 1, "", "semodule: unrecognized option '--checksum'\n"
            return 0, self.listing("--checksum" in argv), ""
        self.transactions.append(list(argv))
        return self.transaction(argv[1:])

    def listing(self, checksums):
        lines = []
        for name in sorted(self.store):
            for priority, entry in sorted(self.store[name].items(), reverse=True):
                flag = "disabled" if name in self.disabled else ""
                line = "%03d %-15s %-4s %-8s" % (priority, name, entry["lang"], flag)
                lines.append(line + (" sha256:%s " % entry["sha256"] if checksums else ""))
        return "\n".join(lines) + "\n"

    def transaction(self, args):
        store, disabled = copy.deepcopy(self.store), set(self.disabled)
        priority = 400
        args = list(args)
        while args:
            option, value = args.pop(0), args.pop(0)
            if option == "-X":
                priority = int(value)
            elif option == "-i":
                name, lang = os.path.basename(value).rsplit(".", 1)
                if name in self.broken:
                    return 1, "", "Failed to resolve AST\nsemodule:  Failed!\n"
                store.setdefault(name, {})[priority] = {"lang": lang, "sha256": self.checksum(value, lang)}
            elif option == "-r":
                if priority not in store.get(value, {}):
                    return 1, "", "libsemanage: Module %s at priority %d does not exist.\n" % (value, priority)
                del store[value][priority]
                if not store[value]:
                    del store[value]
            elif option in ("-e", "-d"):
                if value not in store:
                    return 1, "", "libsemanage: Module %s does not exist.\n" % value
                (disabled.discard if option == "-e" else disabled.add)(value)
        self.store, self.disabled = store, disabled
        self.commits += 1
        return 0, "", ""

    def checksum(self, path, lang):
        data = Path(path).read_bytes()
        if lang == "pp":
            rc, out, err = self.real_run([CONVERTER, path, "/dev/stdout"])
            assert rc == 0, err
            data = out.encode()
        return hashlib.sha256(data).hexdigest()

    def sha256(self, name, priority=400):
        return self.store[name][priority]["sha256"]


@pytest.fixture
def semodule(run):
    return FakeSemodule(run)


@pytest.fixture
def store(tmp_path):
    clock = iter(range(1000, 100000, 10))
    return core.VersionStore(str(tmp_path / "state"), keep=5, clock=lambda: next(clock))


@pytest.fixture
def manager(semodule, store):
    return core.Manager(semodule, TOOLS, MLS, store)


def apply(manager, *specs, check=False):
    """(changed, modules, transaction, diff, warnings): the core's plan through the real runner, as
    the module runs it (applied unless check), transaction being the semodule command or None;
    the core's errors are raised."""
    result, warnings = returned(lambda: core.decide(core.prepare(list(specs)), manager), check)
    assert result["transaction"] is (result["semodule_command"] is not None)
    return result["changed"], result["modules"], result["semodule_command"], result["diff"], warnings


def build(one, host, tools, run, workdir):
    """Read one spec's source, then build it: what a run does for each module."""
    return core.build(core.read_source(one), host, tools, run, workdir)


def spec(name, **kwargs):
    return core.Spec(name, **kwargs)


# ---------------------------------------------------------------- headers and formats

def test_policy_header_says_whether_the_policy_is_mls():
    header = struct.pack("<II", core.POLICYDB_MAGIC, 8) + b"SE Linux" + struct.pack("<II", 33, 5)
    assert core.policy_is_mls(header) is True
    header = header[:-4] + struct.pack("<I", 4)
    assert core.policy_is_mls(header) is False
    with pytest.raises(core.SelinuxModuleError, match="cannot read the policy header"):
        core.policy_is_mls(b"\x7fELF" + b"\0" * 30)


def test_pp_header_gives_name_and_mls(run, tmp_path):
    mls = build(spec("kvmsec_ta", content=te("kvmsec_ta")), MLS, TOOLS, run, str(tmp_path))
    assert core.pp_info(mls.data) == ("kvmsec_ta", True)
    plain = build(spec("kvmsec_ta", content=te("kvmsec_ta")), core.Host("targeted", False),
                  TOOLS, run, str(tmp_path))
    assert core.pp_info(plain.data) == ("kvmsec_ta", False)
    with pytest.raises(core.SelinuxModuleError, match="not a valid SELinux policy package"):
        core.pp_info(b"(allow a b (file (read)))")


def test_find_policy_file_takes_the_newest(tmp_path):
    for name in ("policy.31", "policy.33", "policy.kern", "policy.9"):
        (tmp_path / name).write_bytes(b"")
    assert core.find_policy_file(str(tmp_path)) == str(tmp_path / "policy.33")
    assert core.find_policy_file(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("text, expected", [
    (te("a"), "te"),
    ("# comment\npolicy_module(a, 1.0)\n", None),
    ("; a CIL module\n(allow a_t b_t (file (read)))\n", "cil"),
    ("", None),
])
def test_sniff_format(text, expected):
    assert core.sniff_format(text) == expected


def test_parse_module_list_real_output():
    modules = core.parse_module_list((DATA / "semodule-list-full-checksum.txt").read_text())
    libvirt = modules["kvmsec_libvirt"][400]
    assert (libvirt.lang, libvirt.enabled, libvirt.sha256) == ("pp", False, LIBVIRT_SHA256)
    assert modules["kvmsec_tc"][400].lang == "cil" and modules["kvmsec_tc"][400].enabled
    assert modules["virt"][100].sha256 is None and modules["virt"][100].enabled


# ---------------------------------------------------------------- AVC -> .te

def test_denials_from_a_real_guest_start():
    rules = core.parse_denials((DATA / "avc-libvirt-guest-start.txt").read_text())
    assert rules[("virtd_t", "systemd_machined_t", "dbus")] == {"send_msg"}        # USER_AVC
    assert rules[("systemd_machined_t", "virtd_t", "dbus")] == {"send_msg"}
    bpf = {"map_create", "map_read", "map_write", "prog_load", "prog_run"}
    assert rules[("virtd_t", "self", "bpf")] == bpf
    assert rules[("virtd_t", "device_t", "filesystem")] == {"unmount"}
    assert rules[("svirt_t", "sysfs_t", "file")] == {"getattr", "open", "read"}
    assert len(rules) == 12


def test_generated_te_is_deterministic_and_compiles(run, tmp_path):
    text = (DATA / "avc-libvirt-guest-start.txt").read_text()
    built = build(spec("local_libvirt", avc=text), MLS, TOOLS, run, str(tmp_path))
    shuffled = "\n".join(reversed(text.splitlines()))
    again = build(spec("local_libvirt", avc=shuffled), MLS, TOOLS, run, str(tmp_path))
    assert built.generated == again.generated and built.sha256 == again.sha256
    assert built.origin == "avc" and built.denials == 12
    assert "allow virtd_t self:capability2 bpf;" in built.generated
    assert "allow virtd_t systemd_machined_t:dbus send_msg;" in built.generated
    assert "\tclass file { getattr open read };" in built.generated
    assert built.sources["avc"] == text and built.sources["te"] == built.generated


def test_avc_without_denials_is_refused(run, tmp_path):
    granted = ('type=AVC msg=audit(1.1:2): avc:  granted  { setenforce } for pid=1 '
               'scontext=u:r:a_t:s0 tcontext=u:r:a_t:s0 tclass=security')
    with pytest.raises(core.SelinuxModuleError, match="holds no AVC or USER_AVC denial"):
        build(spec("x", avc=granted), MLS, TOOLS, run, str(tmp_path))


# ---------------------------------------------------------------- building sources

def test_te_checksum_is_what_semodule_reports(run, tmp_path):
    built = build(spec("kvmsec_libvirt", content=(DATA / "kvmsec_libvirt.te").read_text()),
                  MLS, TOOLS, run, str(tmp_path))
    assert (built.format, built.sha256) == ("pp", LIBVIRT_SHA256)


def test_cil_checksum_is_the_file(run, tmp_path):
    path = tmp_path / "kvmsec_tc.cil"
    path.write_text(CIL_SOURCE)
    built = build(spec("kvmsec_tc", src=str(path)), MLS, TOOLS, run, str(tmp_path))
    assert (built.format, built.sha256, built.data) == ("cil", CIL_SHA256, CIL_SOURCE.encode())


def test_file_contexts_change_the_module_interface_does_not(run, tmp_path):
    plain = build(spec("kvmsec_ta", content=te("kvmsec_ta")), MLS, TOOLS, run, str(tmp_path))
    fc = "/srv/kvmsec(/.*)?  system_u:object_r:virt_image_t:s0\n"
    with_fc = build(spec("kvmsec_ta", content=te("kvmsec_ta"), fc_content=fc), MLS, TOOLS, run,
                    str(tmp_path))
    with_if = build(spec("kvmsec_ta", content=te("kvmsec_ta"), if_content="## <summary/>\n"),
                    MLS, TOOLS, run, str(tmp_path))
    assert with_fc.sha256 != plain.sha256 and with_fc.sources["fc"] == fc
    assert with_if.sha256 == plain.sha256 and with_if.sources["if"] == "## <summary/>\n"


def test_prebuilt_pp_is_checked_and_hashed_like_its_source(run, tmp_path):
    built = build(spec("kvmsec_ta", content=te("kvmsec_ta")), MLS, TOOLS, run, str(tmp_path))
    path = tmp_path / "prebuilt.pp"
    path.write_bytes(built.data)
    from_pp = build(spec("kvmsec_ta", src=str(path)), MLS, TOOLS, run, str(tmp_path))
    assert (from_pp.sha256, from_pp.origin) == (built.sha256, "pp")
    with pytest.raises(core.SelinuxModuleError, match="the policy package is module kvmsec_ta inside"):
        build(spec("other", src=str(path)), MLS, TOOLS, run, str(tmp_path))
    with pytest.raises(core.SelinuxModuleError, match="built with MLS, this host's policy is not MLS"):
        build(spec("kvmsec_ta", src=str(path)), core.Host("x", False), TOOLS, run, str(tmp_path))


@pytest.mark.parametrize("source, message", [
    (dict(content="module x 1.0;\nrequire { type a_t; }\nallow a_t self:file read\n"),
     r"module x does not compile: checkmodule failed \(exit 1\): x.te:4:ERROR 'syntax error'"),
    (dict(content="module x 1.0;\nallow a_t self:file read;\n"),
     "module x does not compile: checkmodule failed"),
    (dict(content=te("y")), "the .te source declares module y; the names must match"),
    (dict(content="policy_module(x, 1.0)\n"), "neither a .te module"),
    (dict(content=te("x"), fmt="pp"), "a .pp is binary: give it as src"),
    (dict(src="/nonexistent/x.te"), r"module x: src /nonexistent/x.te cannot be read \(No such file or "
                                    r"directory\): give the path of a readable .te, .cil or .pp file"),
    (dict(content=te("x"), fc_src="/nonexistent/x.fc"), r"module x: fc_src /nonexistent/x.fc cannot be read"),
    (dict(content=te("x"), if_src="/nonexistent/x.if"), r"module x: if_src /nonexistent/x.if cannot be read"),
    (dict(src="/dev/null", fmt="cil"), "module x: src /dev/null is empty: give a file holding"),
    (dict(content=""), "module x: content is empty: give the text of a .te or .cil module"),
    (dict(content=" \n\t\n", fmt="cil"), "module x: content is empty"),
    (dict(content="(allow a b (file (read))\n"), "module x: the CIL source does not parse: Open parenthesis "
                                                 "without matching close at line 2"),
    (dict(src="/etc/hostname"), "cannot tell the format of /etc/hostname"),
    (dict(content=CIL_SOURCE, fc_content="/x  u:r:t:s0\n"), "file contexts .* go with a .te source"),
])
def test_bad_sources_say_what_is_wrong(run, tmp_path, source, message):
    with pytest.raises(core.SelinuxModuleError, match=message) as caught:
        build(spec("x", **source), MLS, TOOLS, run, str(tmp_path))
    assert str(tmp_path) not in str(caught.value)


# libsepol's own messages for these (checked against the library below when it is there)
CIL_CASES = [
    (CIL_SOURCE, None),
    ("; only a comment\n(allow a b (file (read))) ; and one after\n", None),
    ('(typeattributeset cil_gen_require "a b")\n', None),
    ("(allow a b (file (read)))\r\n()\n", None),
    ("(allow a b (file (read))\n", "Open parenthesis without matching close at line 2"),
    ("(allow a b))\n", "Close parenthesis without matching open at line 1"),
    ("\n\nallow a b\n", "Symbol not inside parenthesis at line 3"),
    ('(a "b)\n', "Invalid token '\"' at line 1"),
    ('(a "b\nc")\n', "Invalid token '\"' at line 1"),
    ("(a \\ b)\n", "Invalid token '\\' at line 1"),
    ("(a b)\n)", "Close parenthesis without matching open at line 2"),
]


@pytest.mark.parametrize("text, message", CIL_CASES)
def test_cil_syntax_as_libsepol_reads_it(text, message):
    assert core.cil_syntax_error(text) == message


def libsepol_parse(text):
    """The first error of libsepol's own CIL parser (cil_add_file, which semodule runs), or None."""
    lib = ctypes.CDLL("libsepol.so.2")
    messages = []
    handler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p)(lambda level, msg: messages.append(msg))
    lib.cil_set_log_handler(handler)
    db = ctypes.c_void_p()
    lib.cil_db_init(ctypes.byref(db))
    data = text.encode()
    try:
        rc = lib.cil_add_file(db, b"x.cil", data, len(data))
    finally:
        lib.cil_db_destroy(ctypes.byref(db))
    if rc == 0:
        return None
    return messages[0].decode().rstrip("\n").replace(" of x.cil", "")


@pytest.mark.skipif(not ctypes.util.find_library("sepol"), reason="libsepol is not installed")
@pytest.mark.parametrize("text, message", CIL_CASES)
def test_the_cil_cases_are_what_libsepol_says(text, message):
    assert libsepol_parse(text) == message


@pytest.mark.parametrize("cil, state, message", [
    ("(allow virtd_t self (capability2 (wake_alarm))\n", "state",
     r"module kvmsec_tc: the CIL source does not parse: Open parenthesis without matching close at line 2"),
    (CIL_SOURCE, "file", r"state_dir \S+/file is not a directory: give the path of a directory"),
    (CIL_SOURCE, "file/state", r"state_dir \S+/file/state cannot be created: \S+/file is not a directory"),
])
def test_check_mode_fails_where_the_real_run_fails(semodule, tmp_path, cil, state, message):
    (tmp_path / "file").write_text("not a directory\n")
    for check in (True, False):
        with pytest.raises(core.SelinuxModuleError, match=message):
            store = core.VersionStore(str(tmp_path / state))
            apply(core.Manager(semodule, TOOLS, MLS, store), spec("kvmsec_tc", content=cil, fmt="cil"), check=check)
    assert semodule.transactions == [] and (tmp_path / "file").read_text() == "not a directory\n"
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_bad_input_is_refused_before_any_host_or_tool_is_known(tmp_path):
    """prepare() takes neither host, tools nor a runner: what it refuses is the input's fault."""
    for bad in (spec("a", src=str(tmp_path / "missing.te")), spec("a", content=""),
                spec("a", content="(a (b)", fmt="cil")):
        with pytest.raises(core.SelinuxModuleError, match="module a: "):
            core.prepare([bad])
    assert core.prepare([spec("a", state="absent")])[0].format is None
    with pytest.raises(core.SelinuxModuleError, match="priority must be 1-999"):
        core.check_priority(0)


@pytest.mark.parametrize("specs, message", [
    ([], "no module given"),
    ([core.Spec("9lives", content="x")], "module name '9lives' is not valid"),
    ([core.Spec("a.b", content="x")], "is not valid"),
    ([core.Spec("a", state="installed", content="x")], "state 'installed' is not one of"),
    ([core.Spec("a", content="x", avc="y")], "give one source, not content and avc"),
    ([core.Spec("a")], "state present needs a source"),
    ([core.Spec("a", state="absent", content="x")], "state absent takes no source"),
    ([core.Spec("a", rollback=True, content="x")], "rollback reinstalls a kept version; it takes no source"),
    ([core.Spec("a", rollback=True, state="disabled")], "rollback needs state present or enabled"),
    ([core.Spec("a", content="x", fc_src="/a", fc_content="b")], "fc_src or fc_content, not both"),
    ([core.Spec("a", content="x"), core.Spec("a", state="absent")], "module a is listed twice"),
])
def test_invalid_requests_are_refused_before_anything_runs(specs, message, manager, semodule):
    with pytest.raises(core.SelinuxModuleError, match=message):
        core.validate(specs)
    with pytest.raises(core.SelinuxModuleError):
        apply(manager, *specs)
    assert semodule.transactions == []


def test_spec_from_params_ignores_other_keys():
    made = core.spec_from_params(dict(name="a", content="x", state=None, priority=400, rollback=None))
    assert (made.name, made.content, made.state, made.rollback) == ("a", "x", "present", False)


# ---------------------------------------------------------------- transactions

def test_batch_installs_in_one_transaction_then_nothing(manager, semodule, store, tmp_path):
    cil = tmp_path / "kvmsec_tc.cil"
    cil.write_text(CIL_SOURCE)
    specs = [spec("kvmsec_libvirt", content=(DATA / "kvmsec_libvirt.te").read_text()),
             spec("kvmsec_ta", content=te("kvmsec_ta"), fc_content="/srv/ta  system_u:object_r:virt_image_t:s0\n"),
             spec("kvmsec_tc", src=str(cil))]
    changed, modules, transaction, diff, warnings = apply(manager, *specs)
    assert changed and warnings == []
    assert semodule.commits == 1 and len(semodule.transactions) == 1
    assert transaction[:3] == [SEMODULE, "-X", "400"] and transaction.count("-i") == 3
    assert semodule.sha256("kvmsec_libvirt") == LIBVIRT_SHA256 == modules[0]["after"]["sha256"]
    assert semodule.sha256("kvmsec_tc") == CIL_SHA256
    assert [m["actions"] for m in modules] == [["install"]] * 3
    assert [len(m["versions"]) for m in modules] == [1, 1, 1]
    kept = Path(store.module_dir("kvmsec_ta")) / modules[1]["sha256"]
    assert sorted(p.name for p in kept.iterdir()) == ["kvmsec_ta.fc", "kvmsec_ta.pp", "kvmsec_ta.te"]
    assert oct(kept.stat().st_mode & 0o777) == "0o700"
    assert oct(kept.parent.stat().st_mode & 0o777) == "0o700"
    assert "400 kvmsec_libvirt pp sha256:%s" % LIBVIRT_SHA256 in diff[0]["after"]
    assert diff[0]["before"] == ""

    changed, modules, transaction, diff, warnings = apply(manager, *specs)
    assert not changed and transaction is None
    assert semodule.commits == 1 and len(semodule.transactions) == 1
    assert [m["actions"] for m in modules] == [[]] * 3
    assert diff[0]["before"] == diff[0]["after"]


def test_check_mode_compiles_and_predicts_but_changes_nothing(manager, semodule, store):
    changed, modules, transaction, diff, dummy = apply(
        manager, spec("kvmsec_ta", content=te("kvmsec_ta")), check=True)
    assert changed and transaction is None and semodule.transactions == []
    assert not os.path.exists(store.root)
    assert modules[0]["actions"] == ["install"] and modules[0]["before"] is None
    assert modules[0]["after"]["sha256"] == modules[0]["sha256"]
    assert "400 kvmsec_ta pp sha256:%s" % modules[0]["sha256"] in diff[0]["after"]


def test_upgrade_rollback_and_versions(manager, semodule, store):
    v1 = spec("kvmsec_ta", content=te("kvmsec_ta"))
    v2 = spec("kvmsec_ta", content=te("kvmsec_ta", "allow virtd_t self:capability2 wake_alarm;", "2.0"))
    first = apply(manager, v1)[1][0]["sha256"]
    dummy, modules, transaction, dummy, dummy = apply(manager, v2)
    second = modules[0]["sha256"]
    assert modules[0]["actions"] == ["upgrade"] and modules[0]["before"]["sha256"] == first
    assert semodule.sha256("kvmsec_ta") == second
    versions = modules[0]["versions"]
    assert [(v["sha256"], v["current"], v["rollback_target"]) for v in versions] == [
        (first, False, True), (second, True, False)]

    changed, modules, transaction, diff, dummy = apply(manager, spec("kvmsec_ta", rollback=True))
    assert changed and modules[0]["actions"] == ["rollback"]
    assert transaction[:4] + transaction[5:] == [SEMODULE, "-X", "400", "-i", "-e", "kvmsec_ta"]
    # semodule reads a copy of the kept version from the run's temporary directory
    assert transaction[4].endswith("/install/kvmsec_ta.pp") and not transaction[4].startswith(store.root)
    assert semodule.sha256("kvmsec_ta") == first and semodule.commits == 3
    assert store.load("kvmsec_ta")["history"] == [first]
    assert {v["sha256"] for v in modules[0]["versions"]} == {first, second}   # still kept

    with pytest.raises(core.SelinuxModuleError, match="module kvmsec_ta: no earlier version to roll back to"):
        apply(manager, spec("kvmsec_ta", rollback=True))
    assert semodule.commits == 3


def test_rollback_after_removal_reinstalls_the_last_version(manager, semodule, store):
    installed = apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")))[1][0]["sha256"]
    changed, modules, dummy, diff, dummy = apply(manager, spec("kvmsec_ta", state="absent"))
    assert changed and modules[0]["actions"] == ["remove"] and "kvmsec_ta" not in semodule.store
    assert modules[0]["after"] is None and diff[0]["after"] == ""
    assert apply(manager, spec("kvmsec_ta", state="absent"))[0] is False
    apply(manager, spec("kvmsec_ta", rollback=True))
    assert semodule.sha256("kvmsec_ta") == installed


def test_disable_enable_and_mixed_operations_share_one_transaction(manager, semodule):
    apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")), spec("kvmsec_tb", content=te("kvmsec_tb")))
    changed, modules, transaction, dummy, dummy = apply(
        manager, spec("kvmsec_ta", state="disabled"), spec("kvmsec_tb", state="absent"),
        spec("kvmsec_tc", content=CIL_SOURCE, fmt="cil"))
    assert [m["actions"] for m in modules] == [["disable"], ["remove"], ["install"]]
    assert semodule.commits == 2 and transaction.count("-X") == 1
    assert semodule.disabled == {"kvmsec_ta"} and "kvmsec_tb" not in semodule.store
    assert modules[0]["after"]["enabled"] is False
    assert apply(manager, spec("kvmsec_ta", state="disabled"))[0] is False
    changed, modules, transaction, dummy, dummy = apply(manager, spec("kvmsec_ta", state="enabled"))
    assert changed and modules[0]["actions"] == ["enable"] and transaction[-2:] == ["-e", "kvmsec_ta"]
    assert semodule.disabled == set()


def test_installing_a_source_disabled(manager, semodule):
    changed, modules, transaction, dummy, dummy = apply(
        manager, spec("kvmsec_ta", content=te("kvmsec_ta"), state="disabled"))
    assert modules[0]["actions"] == ["install", "disable"] and transaction[-2:] == ["-d", "kvmsec_ta"]
    assert semodule.disabled == {"kvmsec_ta"}


def test_state_of_a_distribution_module_without_source(manager, semodule):
    semodule.store["games"] = {100: {"lang": "pp", "sha256": "0" * 64}}
    changed, modules, transaction, dummy, warnings = apply(manager, spec("games", state="disabled"))
    assert changed and transaction == [SEMODULE, "-X", "400", "-d", "games"]
    assert modules[0]["before"] is None and modules[0]["after"] is None
    with pytest.raises(core.SelinuxModuleError, match="module nothere is not installed: give a source"):
        apply(manager, spec("nothere", state="enabled"))


def test_priorities_warn_when_shadowed_or_left_behind(manager, semodule):
    semodule.store["kvmsec_ta"] = {500: {"lang": "pp", "sha256": "0" * 64}}
    dummy, dummy, dummy, dummy, warnings = apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")))
    assert warnings == ["module kvmsec_ta at priority 500 overrides the one installed at 400"]
    dummy, dummy, dummy, dummy, warnings = apply(manager, spec("kvmsec_ta", state="absent"))
    assert warnings == ["module kvmsec_ta stays installed at priority 500"]


def test_broken_module_in_a_batch_installs_nothing(manager, semodule, store):
    apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")))
    before = copy.deepcopy(semodule.store)
    semodule.broken.add("kvmsec_tb")
    with pytest.raises(core.SelinuxModuleError) as caught:
        apply(manager, spec("kvmsec_tc", content=CIL_SOURCE), spec("kvmsec_tb", content=te("kvmsec_tb")),
              spec("kvmsec_ta", state="disabled"))
    assert "the policy transaction failed and changed nothing" in str(caught.value)
    assert "Failed to resolve AST" in str(caught.value)
    assert semodule.store == before and semodule.disabled == set() and semodule.commits == 1
    assert not os.path.exists(store.module_dir("kvmsec_tb"))
    assert not os.path.exists(store.module_dir("kvmsec_tc"))


def test_compile_error_in_a_batch_runs_no_transaction(manager, semodule):
    with pytest.raises(core.SelinuxModuleError, match="module kvmsec_tb does not compile"):
        apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")),
              spec("kvmsec_tb", content="module kvmsec_tb 1.0;\nallow x y:z w\n"))
    assert semodule.transactions == []


def test_avc_input_diff_shows_generated_source(manager, semodule):
    text = (DATA / "avc-libvirt-guest-start.txt").read_text()
    changed, modules, dummy, diff, dummy = apply(manager, spec("local_libvirt", avc=text), check=True)
    assert modules[0]["generated"] == diff[1]["after"] and modules[0]["denials"] == 12
    assert diff[1]["after_header"] == "local_libvirt.te (generated from 12 denied access rules)"
    apply(manager, spec("local_libvirt", avc=text))
    assert apply(manager, spec("local_libvirt", avc=text))[0] is False


def test_versions_are_bounded(semodule, tmp_path):
    clock = iter(range(1, 1000))
    bounded = core.VersionStore(str(tmp_path / "state"), keep=2, clock=lambda: next(clock))
    manager = core.Manager(semodule, TOOLS, MLS, bounded)
    shas = []
    for n in range(4):
        rule = "allow virtd_t self:capability2 %s;" % ("perfmon" if n % 2 else "wake_alarm")
        shas.append(apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta", rule, "1.%d" % n)))[1][0]["sha256"])
    index = bounded.load("kvmsec_ta")
    assert len(index["versions"]) == 2
    assert sorted(os.listdir(bounded.module_dir("kvmsec_ta"))) == sorted([shas[2], shas[3], "index.json"])
    with pytest.raises(core.SelinuxModuleError, match="keep_versions must be at least 2"):
        core.VersionStore(str(tmp_path), keep=1)


def test_matching_module_installed_elsewhere_is_adopted_without_transaction(manager, semodule, store):
    built = apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")), check=True)[1][0]
    semodule.store["kvmsec_ta"] = {400: {"lang": "pp", "sha256": built["sha256"]}}
    changed, modules, transaction, dummy, dummy = apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")))
    assert not changed and transaction is None and semodule.transactions == []
    assert store.load("kvmsec_ta")["history"] == [built["sha256"]]
    assert modules[0]["versions"][0]["current"] is True


def test_damaged_index_says_how_to_recover(manager, store):
    os.makedirs(store.module_dir("kvmsec_ta"))
    Path(store.index_path("kvmsec_ta")).write_text("{not json")
    with pytest.raises(core.SelinuxModuleError, match="is damaged .*move it aside"):
        apply(manager, spec("kvmsec_ta", rollback=True))


def test_priority_range(semodule, store):
    with pytest.raises(core.SelinuxModuleError, match="priority must be 1-999"):
        core.Manager(semodule, TOOLS, MLS, store, priority=1000)


# ---------------------------------------------------------------- older policycoreutils

def test_checksums_from_the_store_when_semodule_cannot_print_them(run, tmp_path):
    fake = FakeSemodule(run, checksum_option=False)
    fake.store["kvmsec_tc"] = {400: {"lang": "cil", "sha256": None}}
    host = core.Host("targeted", True, store_root=str(tmp_path))
    module_dir = tmp_path / "targeted" / "active" / "modules" / "400" / "kvmsec_tc"
    module_dir.mkdir(parents=True)
    (module_dir / "cil").write_bytes(bz2.compress(CIL_SOURCE.encode()))
    installed = core.read_installed(fake, TOOLS, host, ["kvmsec_tc"])
    assert installed["kvmsec_tc"][400].sha256 == CIL_SHA256


def test_other_listing_errors_are_not_mistaken_for_an_old_semodule():
    def failing(argv, data=None):
        return 1, "", "semodule: SELinux policy is not managed or store cannot be accessed.\n"
    with pytest.raises(core.CommandError, match="store cannot be accessed"):
        core.read_installed(failing, TOOLS, MLS, ["a"])


def test_index_is_plain_json(manager, store):
    apply(manager, spec("kvmsec_ta", content=te("kvmsec_ta")))
    index = json.loads(Path(store.index_path("kvmsec_ta")).read_text())
    assert list(index) == ["history", "versions"] and len(index["history"]) == 1
