"""The selinux_settings core: planning, check mode, one transaction, rollback.

The policy store and the running kernel are a stand-in (``Store``): this development machine
has no SELinux kernel and no policy store, and libsemanage cannot run without one. restorecon is
a table-driven fake for the same reason; the image directories are real. The real store is
exercised on the SELinux-enforcing lab host (tests/integration/on_lab_vm/test_selinux_lab.py, through
the selinux role, and Molecule's converge, idempotence and drift audit).
"""

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _selinux_settings as core


class Store(object):
    """The values SemanageStore reads, and a log of what it was asked to write."""

    def __init__(self, booleans, runtime=None, rules=None, types=("virt_image_t", "var_t")):
        self.persistent = dict(booleans)
        self.runtime = dict(runtime if runtime is not None else booleans)
        self.rules = dict(rules or {})
        self.types = types
        self.commits = []
        self.fail_runtime = set()

    def booleans(self):
        return dict(self.persistent)

    def runtime_booleans(self):
        return dict(self.runtime)

    def valid_type(self, setype):
        return setype in self.types

    def file_contexts(self, expressions):
        return dict((e, self.rules[e]) for e in expressions if e in self.rules)

    def commit(self, booleans, rules):
        self.commits.append((dict(booleans), list(rules)))
        for name, value in booleans.items():
            self.persistent[name] = self.runtime[name] = value
        for expression, setype in rules:
            if setype is None:
                self.rules.pop(expression, None)
            else:
                self.rules[expression] = (setype, True)

    def set_runtime(self, name, value):
        if name in self.fail_runtime:
            raise core.SelinuxSettingsError("cannot set boolean %s in the running kernel" % name)
        self.runtime[name] = value


class Restorecon(object):
    """restorecon -R -v [-n]: the lines it prints per directory; what ran."""

    def __init__(self, lines=None, rc=0):
        self.lines = lines or {}
        self.rc = rc
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(argv)
        paths = argv[argv.index("--") + 1:]
        dry = "-n" in argv
        out = "".join("%s %s\n" % ("Would relabel" if dry else "Relabeled", line)
                      for path in paths for line in self.lines.get(path, []))
        return self.rc, out, "restorecon: broken\n" if self.rc else ""


WANTED = {"virt_use_nfs": False, "virt_use_execmem": True, "staff_use_svirt": False}


def test_booleans_that_differ_go_into_one_transaction_and_missing_ones_are_skipped():
    store = Store({"virt_use_nfs": True, "virt_use_execmem": False})
    plan = core.decide(store, Restorecon(), WANTED, [])
    assert plan.changed
    assert plan.result["booleans"] == [
        {"name": "virt_use_execmem", "value": True, "runtime": False, "persistent": False},
        {"name": "virt_use_nfs", "value": False, "runtime": True, "persistent": True}]
    assert plan.result["missing"] == ["staff_use_svirt"]
    assert plan.warnings == []          # the role's defaults hold RHEL's booleans: no warning per run
    assert "boolean virt_use_nfs: on now, on at boot" in plan.diff["before"]
    assert "boolean virt_use_nfs: off now, off at boot" in plan.diff["after"]
    assert store.commits == []          # check mode is the plan alone

    result = plan.apply()
    assert store.commits == [({"virt_use_nfs": False, "virt_use_execmem": True}, [])]
    assert result["transaction"] is True
    again = core.decide(store, Restorecon(), WANTED, [])
    assert not again.changed and again.apply is None and again.diff["after"] == ""


def test_a_value_changed_only_at_runtime_is_set_there_without_a_transaction():
    store = Store({"virt_use_nfs": False, "virt_use_execmem": True},
                  runtime={"virt_use_nfs": True, "virt_use_execmem": True})
    plan = core.decide(store, Restorecon(), WANTED, [])
    assert plan.changed and plan.result["booleans"][0]["runtime"] is True
    assert "boolean virt_use_nfs: on now, off at boot" in plan.diff["before"]
    assert plan.apply()["transaction"] is False
    assert store.commits == [] and store.runtime["virt_use_nfs"] is False


def test_a_runtime_value_that_cannot_be_set_puts_back_the_runtime_and_the_store():
    store = Store({"virt_use_nfs": True, "virt_use_comm": False, "virt_use_samba": False},
                  runtime={"virt_use_nfs": True, "virt_use_comm": True, "virt_use_samba": True})
    store.fail_runtime = {"virt_use_samba"}
    plan = core.decide(store, Restorecon(), {"virt_use_nfs": False, "virt_use_comm": False,
                                             "virt_use_samba": False}, [])
    with pytest.raises(core.SelinuxSettingsError, match="virt_use_samba"):
        plan.apply()
    assert store.persistent["virt_use_nfs"] is True and store.runtime["virt_use_nfs"] is True
    assert store.runtime["virt_use_comm"] is True
    assert store.commits[-1] == ({"virt_use_nfs": True}, [])


def test_new_and_changed_rules_go_into_the_same_transaction_and_relabel_what_exists(tmp_path):
    images, more, later = tmp_path / "images", tmp_path / "more", tmp_path / "later"
    images.mkdir()
    more.mkdir()
    store = Store({"virt_use_nfs": True}, rules={str(more) + "(/.*)?": ("var_t", True)})
    restorecon = Restorecon({str(images): ["%s/a.qcow2 from a:b:var_t:s0 to a:b:virt_image_t:s0" % images]})
    wanted = core.check_file_contexts([{"path": str(images) + "/", "setype": "virt_image_t"},
                                       {"path": str(more), "setype": "virt_image_t"},
                                       {"path": str(later), "setype": "virt_image_t"}])
    plan = core.decide(store, restorecon, {"virt_use_nfs": False}, wanted)
    assert [(r["path"], r["before"]) for r in plan.result["file_contexts"]] == [
        (str(images), None), (str(more), "var_t"), (str(later), None)]
    assert "fcontext %s(/.*)?: no rule" % images in plan.diff["before"]
    assert "fcontext %s(/.*)?: virt_image_t" % more in plan.diff["after"]
    # the rules are not in place yet: restorecon -n cannot know, the directories are relabelled whole
    assert restorecon.calls == []
    assert [r["path"] for r in plan.result["relabelled"]] == [
        "%s (its rule changes)" % images, "%s (its rule changes)" % more]

    result = plan.apply()
    assert len(store.commits) == 1 and store.commits[0][0] == {"virt_use_nfs": False}
    assert [e for e, t in store.commits[0][1]] == [str(p) + "(/.*)?" for p in (images, more, later)]
    assert restorecon.calls == [["restorecon", "-R", "-v", "--", str(images), str(more)]]
    assert result["relabelled"] == [{"path": "%s/a.qcow2" % images, "before": "a:b:var_t:s0",
                                     "after": "a:b:virt_image_t:s0"}]
    assert result["relabelled_count"] == 1


def test_with_the_rules_in_place_restorecon_n_decides_and_the_run_follows_it(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    store = Store({}, rules={str(images) + "(/.*)?": ("virt_image_t", True)})
    wanted = [(str(images), "virt_image_t")]
    clean = Restorecon()
    plan = core.decide(store, clean, {}, wanted)
    assert not plan.changed and clean.calls == [["restorecon", "-R", "-v", "-n", "--", str(images)]]

    drifted = Restorecon({str(images): ["%s/b.qcow2 from a:b:tmp_t:s0 to a:b:virt_image_t:s0" % images]})
    plan = core.decide(store, drifted, {}, wanted)
    assert plan.changed and plan.result["relabelled"][0]["before"] == "a:b:tmp_t:s0"
    assert "relabel Would relabel %s/b.qcow2" % images in plan.diff["after"]
    plan.apply()
    assert store.commits == [] and drifted.calls[-1] == ["restorecon", "-R", "-v", "--", str(images)]

    unasked = core.decide(store, drifted, {}, wanted, relabel=False)
    assert not unasked.changed


def test_a_rule_the_policy_already_gives_is_left_alone(tmp_path):
    store = Store({}, rules={"/var/lib/libvirt/images(/.*)?": ("virt_image_t", False)})
    plan = core.decide(store, Restorecon(), {}, [("/var/lib/libvirt/images", "virt_image_t")], relabel=False)
    assert not plan.changed


def test_a_restorecon_failure_is_the_operators_with_its_message(tmp_path):
    store = Store({}, rules={str(tmp_path) + "(/.*)?": ("virt_image_t", True)})
    with pytest.raises(core.SelinuxSettingsError, match="restorecon failed .exit 1.: restorecon: broken"):
        core.decide(store, Restorecon(rc=1), {}, [(str(tmp_path), "virt_image_t")])


def test_an_unknown_type_is_refused_before_anything_is_written(tmp_path):
    store = Store({"virt_use_nfs": True})
    with pytest.raises(core.SelinuxSettingsError, match="setype virt_imgae_t for /srv/x is not a type"):
        core.decide(store, Restorecon(), {"virt_use_nfs": False}, [("/srv/x", "virt_imgae_t")])
    assert store.commits == [] and store.runtime["virt_use_nfs"] is True


@pytest.mark.parametrize("entries, message", [
    ([{"path": "srv/images", "setype": "virt_image_t"}], r"file_contexts\[0\].path: 'srv/images' is not an absolute"),
    ([{"path": "/", "setype": "virt_image_t"}], "is not an absolute directory below /"),
    ([{"path": "/srv/im ages", "setype": "virt_image_t"}], "holds a space or a regular expression character"),
    ([{"path": "/srv/(x)", "setype": "virt_image_t"}], "holds a space or a regular expression character"),
    ([{"path": "/srv/x", "setype": "virt_image"}], r"file_contexts\[0\].setype: 'virt_image' is not an SELinux type"),
    ([{"path": "/srv/x", "setype": "virt_image_t"}, {"path": "/srv/x/", "setype": "virt_image_t"}],
     r"file_contexts\[1\].path: /srv/x is listed twice"),
])
def test_bad_file_contexts_say_which_entry_and_what_is_valid(entries, message):
    with pytest.raises(core.SelinuxSettingsError, match=message):
        core.check_file_contexts(entries)


def test_boolean_values_are_read_as_ansible_reads_them_and_bad_ones_named():
    assert core.check_booleans({"a_b": "on", "c": "no", "d": 1}) == {"a_b": True, "c": False, "d": True}
    with pytest.raises(core.SelinuxSettingsError, match="booleans.virt_use_nfs: 'maybe' is not a boolean value"):
        core.check_booleans({"virt_use_nfs": "maybe"})
    with pytest.raises(core.SelinuxSettingsError, match="'virt use' is not a boolean name"):
        core.check_booleans({"virt use": True})


def test_the_relabel_list_is_cut_and_counted(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    store = Store({}, rules={str(images) + "(/.*)?": ("virt_image_t", True)})
    lines = ["%s/%d from a:b:var_t:s0 to a:b:virt_image_t:s0" % (images, n) for n in range(60)]
    plan = core.decide(store, Restorecon({str(images): lines}), {}, [(str(images), "virt_image_t")])
    assert len(plan.result["relabelled"]) == 50 and plan.result["relabelled_count"] == 60
    assert "relabel ... 10 more" in plan.diff["after"]
