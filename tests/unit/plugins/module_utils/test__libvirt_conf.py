"""Unit tests of the libvirt configuration editor, without Ansible.

The syntax cases follow libvirt's own parser (src/util/virconf.c). The round trip runs against
the real /etc/libvirt/qemu.conf of this machine when libvirt is installed (scripts/bootstrap
installs it), so the editor is exercised on the file it is meant for.
"""

import os

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt_conf as conf

SAMPLE = """\
# The default security driver is SELinux. ...
#
#       security_driver = [ "selinux", "apparmor" ]
#
#security_driver = "selinux"

#security_default_confined = 1

user = "root"   # run as root (bad)
user = "qemu"

# What devices are accessible to QEMU
#cgroup_device_acl = [
#    "/dev/null", "/dev/full", "/dev/zero",
#]

cgroup_device_acl = [
    "/dev/null",   # always
    "/dev/kvm",
    '/dev/vfio/vfio',
]
vnc_password = "hunter22"
namespaces = []
"""


def test_parse_reads_every_value_kind():
    settings = conf.values(SAMPLE)
    assert settings == {
        "user": "root",
        "cgroup_device_acl": ["/dev/null", "/dev/kvm", "/dev/vfio/vfio"],
        "vnc_password": "hunter22",
        "namespaces": [],
    }


@pytest.mark.parametrize("text, value", [
    ("a = 1\n", 1),
    ("a = -5", -5),
    ("a=+3;\n", 3),
    ("a = 'x\"y'\n", 'x"y'),
    ('a = """two\nlines"""\n', "two\nlines"),
    ("a = [ ]\n", []),
    ("a = [1, 'b', [\"c\"],]\n", [1, "b", ["c"]]),
    ("a = 1; b = 2\n", 1),
])
def test_values_of_each_syntax(text, value):
    assert conf.values(text)["a"] == value


@pytest.mark.parametrize("text, line, message", [
    ("a = 1\nb = \"open\n", 2, "not closed"),
    ("a = 1\n\nb = [1, 2\n", 4, "never closed"),
    ("a 1\n", 1, "expected = after a"),
    ("a = yes\n", 1, "expected a value"),
    ("a = 1 2\n", 1, "unexpected text"),
    ("a = [1 2]\n", 1, "expected , or ]"),
    ("= 1\n", 1, "expected a setting name"),
])
def test_syntax_errors_name_the_line(text, line, message):
    with pytest.raises(conf.ConfError) as caught:
        conf.parse(text)
    assert str(caught.value).startswith("line %d:" % line)
    assert message in str(caught.value)


def test_new_setting_lands_after_libvirts_example_not_the_prose():
    new_text, changes = conf.plan(SAMPLE, {"security_driver": "selinux"})
    lines = new_text.splitlines()
    assert lines[lines.index('#security_driver = "selinux"') + 1] == 'security_driver = "selinux"'
    assert changes == [{"key": "security_driver", "before": None, "after": "selinux"}]


def test_duplicates_collapse_to_the_requested_value():
    new_text, changes = conf.plan(SAMPLE, {"user": "libvirt-qemu"})
    assert new_text.count("\nuser = ") == 1
    assert 'user = "libvirt-qemu"\n' in new_text
    assert "run as root" not in new_text
    assert changes == [{"key": "user", "before": "root", "after": "libvirt-qemu"}]


def test_a_duplicate_is_a_change_even_when_the_first_value_is_right():
    text = "user = \"qemu\"\nuser = \"root\"\n"
    new_text, changes = conf.plan(text, {"user": "qemu"})
    assert new_text == "user = \"qemu\"\n"
    assert changes[0]["before"] == "qemu"


def test_multiline_list_is_replaced_whole():
    new_text, dummy = conf.plan(SAMPLE, {"cgroup_device_acl": ["/dev/null", "/dev/full"]})
    assert conf.values(new_text)["cgroup_device_acl"] == ["/dev/null", "/dev/full"]
    assert "/dev/kvm" not in new_text
    # the commented example is still there, untouched
    assert '#    "/dev/null", "/dev/full", "/dev/zero",' in new_text


def test_null_removes_a_setting_so_the_default_applies():
    new_text, changes = conf.plan(SAMPLE, {"namespaces": None})
    assert "namespaces" not in conf.values(new_text)
    assert changes == [{"key": "namespaces", "before": [], "after": None}]


def test_unchanged_settings_plan_no_change_and_the_same_text():
    new_text, changes = conf.plan(SAMPLE, {"namespaces": [], "vnc_password": "hunter22"})
    assert (new_text, changes) == (SAMPLE, [])


def test_booleans_become_integers_and_strings_pick_a_safe_quote():
    new_text, dummy = conf.plan("", {"remember_owner": True, "spice_listen": 'a"b'})
    assert new_text == "remember_owner = 1\nspice_listen = 'a\"b'\n"
    assert conf.values(new_text) == {"remember_owner": 1, "spice_listen": 'a"b'}


def test_appending_to_a_file_without_final_newline():
    new_text, dummy = conf.plan("a = 1", {"b": 2})
    assert new_text == "a = 1\nb = 2\n"


@pytest.mark.parametrize("settings, message", [
    ({"bad name": 1}, "'bad name' is not a valid setting name: libvirt reads a letter followed by"),
    # virConfParseName: a letter first, then letters, digits and _ (dots only in LXC/VMX files)
    ({"_user": "qemu"}, "'_user' is not a valid setting name"),
    ({"security.driver": "selinux"}, "'security.driver' is not a valid setting name"),
    ({"x": "two\nlines"}, "x: a string may not hold a newline"),
    ({"x": "carriage\rreturn"}, "x: a string may not hold a newline, a carriage return"),
    ({"x": "nul\0byte"}, "or a NUL character"),
    ({"x": "both ' and \""}, "both kinds of quote"),
    ({"x": {"a": 1}}, "x: a dictionary is not a value libvirt's configuration files hold; valid: an "
                      "integer from -9223372036854775808 to 9223372036854775807"),
    ({"x": 1.5}, "x: a decimal number is not a value"),
    # libvirt's parser reads numbers into a long long and silently wraps bigger ones
    ({"max_processes": 1180591620717411303424},
     "max_processes: 1180591620717411303424 is out of range: libvirt reads numbers as signed 64-bit"),
    ({"max_processes": 1 << 63}, "9223372036854775808 is out of range"),
    ({"max_processes": -(1 << 63) - 1}, "-9223372036854775809 is out of range"),
    # the daemons read lists as string lists: "expected a string list" refuses the whole file
    ({"cgroup_device_acl": ["/dev/null", ["/dev/zero"]]},
     "cgroup_device_acl: item 2 of the list is a list: libvirt reads list settings as lists of strings"),
    ({"cgroup_device_acl": ["/dev/null", 5]}, "item 2 of the list is an integer"),
    ({"namespaces": [None]}, "item 1 of the list is null"),
    ({"namespaces": ["mount\n"]}, "namespaces: a string may not hold a newline"),
])
def test_values_libvirt_cannot_read_are_refused_naming_the_setting(settings, message):
    with pytest.raises(conf.ConfError) as caught:
        conf.plan(SAMPLE, settings)
    assert message in str(caught.value)


@pytest.mark.parametrize("value", [(1 << 63) - 1, -(1 << 63), 0, True, ["/dev/null"], [], "", "it's"])
def test_values_at_the_edge_of_what_libvirt_reads_are_written(value):
    new_text, dummy = conf.plan("", {"x": value})
    assert conf.values(new_text)["x"] == (int(value) if isinstance(value, bool) else value)


def test_a_refused_secret_value_is_not_shown():
    with pytest.raises(conf.ConfError) as caught:
        conf.plan("", {"vnc_password": 1 << 70})
    assert str(1 << 70) not in str(caught.value) and conf.MASK in str(caught.value)


@pytest.mark.parametrize("settings, hidden", [
    ({"vnc_password": "s3cret", "user": "qemu"}, {"s3cret"}),
    ({"spice_password": 123456}, {"123456"}),
    ({"tls_secret_list": ["a1", ["b2"]], "x": "y"}, {"a1", "b2"}),
    ({"vnc_password": None, "remember_owner": True}, set()),
    ({"vnc_password": True}, set()),
])
def test_secret_values_given_as_plain_settings_are_found_to_be_hidden(settings, hidden):
    assert conf.leaked_secret_values(settings) == hidden


def test_a_broken_file_is_refused_with_its_line_and_not_edited():
    with pytest.raises(conf.ConfError) as caught:
        conf.plan("ok = 1\nbroken = [\n", {"ok": 2})
    assert "line 3" in str(caught.value)


def test_secrets_are_masked_in_changes_and_display_text():
    new_text, changes = conf.plan(SAMPLE, {"vnc_password": "n3w-secret"})
    assert changes == [{"key": "vnc_password", "before": conf.MASK, "after": conf.MASK}]
    shown = conf.masked(new_text)
    assert "n3w-secret" not in shown and "hunter22" not in shown
    assert "vnc_password = %s" % conf.MASK in shown
    assert conf.values(new_text)["vnc_password"] == "n3w-secret"


def test_secret_settings_must_come_through_the_secret_channel():
    merged, names = conf.split_secrets({"vnc_tls": 1, "spice_password": None}, {"vnc_password": "x", "tok": "y"})
    assert merged == {"vnc_tls": 1, "spice_password": None, "vnc_password": "x", "tok": "y"}
    assert set(names) == {"vnc_password", "tok"}
    with pytest.raises(conf.ConfError) as caught:
        conf.split_secrets({"vnc_password": "x"}, {})
    assert "vnc_password look like secrets: give them in secret_settings" in str(caught.value)
    with pytest.raises(conf.ConfError):
        conf.split_secrets({"tok": 1}, {"tok": "y"})


def test_caller_marked_secrets_are_masked_whatever_their_name():
    new_text, changes = conf.plan("", {"tok": "abc123"}, secret_names=("tok",))
    assert changes == [{"key": "tok", "before": None, "after": conf.MASK}]
    assert "abc123" not in conf.masked(new_text, ("tok",))


@pytest.mark.skipif(not os.path.exists("/etc/libvirt/qemu.conf"), reason="libvirt not installed")
def test_round_trip_on_the_real_qemu_conf():
    with open("/etc/libvirt/qemu.conf") as handle:
        text = handle.read()
    settings = {"security_driver": "selinux", "security_default_confined": 1,
                "security_require_confined": 1, "dynamic_ownership": 1, "remember_owner": 1,
                "user": "libvirt-qemu", "group": "libvirt-qemu",
                "cgroup_device_acl": ["/dev/null", "/dev/full", "/dev/zero"]}
    new_text, changes = conf.plan(text, settings)
    assert {change["key"] for change in changes} <= set(settings)
    for name, value in settings.items():
        assert conf.values(new_text)[name] == value
    # only added lines: every original line is still there, in order
    original = text.splitlines()
    kept = [line for line in new_text.splitlines() if line in original]
    assert kept == [line for line in original if line in kept]
    assert conf.plan(new_text, settings) == (new_text, [])


def test_decide_predicts_and_apply_writes_with_a_backup_first(tmp_path):
    path = tmp_path / "qemu.conf"
    path.write_text('#security_driver = "selinux"\n')
    backups = []
    plan = conf.decide(str(path), {"security_require_confined": 1}, {"vnc_password": "s3cret"},
                       backup=lambda name: backups.append(name) or name + ".bak")
    assert plan.changed and path.read_text() == '#security_driver = "selinux"\n'
    assert "s3cret" not in plan.diff["after"] and "vnc_password" in plan.diff["after"]
    assert plan.apply()["backup_file"] == str(path) + ".bak" and backups == [str(path)]
    assert "security_require_confined = 1\n" in path.read_text() and "s3cret" in path.read_text()
    again = conf.decide(str(path), {"security_require_confined": 1}, {"vnc_password": "s3cret"})
    assert not again.changed and again.apply is None


def test_a_file_that_cannot_be_written_fails_cleanly_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "qemu.conf"
    path.write_text("")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conf._files, "atomic_write", full)
    with pytest.raises(conf.ConfError, match="cannot write .*qemu.conf: No space left on device; it is as it was"):
        conf.decide(str(path), {"security_require_confined": 1}, {}).apply()
    assert path.read_text() == ""


def test_a_relative_path_is_refused():
    with pytest.raises(conf.ConfError, match="path: 'qemu.conf' is not an absolute path"):
        conf.decide("qemu.conf", {"security_require_confined": 1}, {})
