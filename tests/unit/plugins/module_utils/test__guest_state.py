"""The guest_state core over the one fake libvirt (no libvirt daemon in the unit tier; the
image_encryption role's integration tests stop and start real guests of this machine's libvirtd
with it). Time is a fake clock: every wait ends by its limit without sleeping."""

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _guest_state as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.fake_libvirt import FakeDomain, connection
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import Module, outcome, returned


class Clock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def guest(name, running=True, answers=True, uuid_tail=1):
    domain = FakeDomain(name, uuid="00000000-0000-4000-8000-%012d" % uuid_tail,
                        live_xml="<domain type='kvm'><name>%s</name><devices/></domain>" % name if running else None)
    domain.answers_shutdown = answers
    return domain


def decide(conn, guests, state, **kwargs):
    clock = Clock()
    return lambda: core.decide(conn, guests, state, clock=clock, sleep=clock.sleep, **kwargs)


def test_running_guests_are_shut_down_and_check_mode_asks_nothing():
    db, web, off = guest("db", uuid_tail=1), guest("web", uuid_tail=2), guest("off", running=False, uuid_tail=3)
    conn = connection(db, web, off)
    predicted, _warnings = returned(decide(conn, ["db", "web", "off"], core.SHUT_OFF), check_mode=True)
    assert predicted["changes"] == [{"key": "db", "before": "running", "after": "shut_off"},
                                    {"key": "web", "before": "running", "after": "shut_off"}]
    assert db.calls == [] and db.active and web.active
    assert predicted["diff"]["after"] == "db: shut_off\nweb: shut_off\n"
    done, warnings = returned(decide(conn, ["db", "web", "off"], core.SHUT_OFF))
    assert done["changes"] == predicted["changes"] and done["forced_off"] == [] and warnings == []
    assert not db.active and not web.active and db.calls == [("shutdown",)] and off.calls == []
    again, _warnings = returned(decide(conn, ["db", "web", "off"], core.SHUT_OFF))
    assert not again["changed"] and again["changes"] == []


def test_a_guest_that_does_not_answer_is_powered_off_only_when_allowed():
    db, stuck = guest("db", uuid_tail=1), guest("stuck", answers=False, uuid_tail=2)
    conn = connection(db, stuck)
    module = Module()
    kind, result = outcome(module, decide(conn, ["db", "stuck"], core.SHUT_OFF, timeout=30), (core.GuestStateError,))
    assert kind == "fail"
    assert result["msg"].startswith("some_module: guest stuck did not shut down within 30 s")
    assert "allow force_off to power it off" in result["msg"] and "run again: db" in result["msg"]
    # the host as it was: the guest that did shut down runs again, the other was never powered off
    assert db.active and stuck.active and ("destroy",) not in stuck.calls
    done, warnings = returned(decide(conn, ["db", "stuck"], core.SHUT_OFF, timeout=30, force_off=True))
    assert done["forced_off"] == ["stuck"] and not stuck.active and not db.active
    assert warnings == ["powered off after 30 s without an answer to the shutdown request: stuck"]


def test_guests_are_started_and_one_that_cannot_start_is_named():
    db, broken = guest("db", running=False, uuid_tail=1), guest("broken", running=False, uuid_tail=2)
    broken.starts = False
    conn = connection(db, broken)
    done, _warnings = returned(decide(conn, ["db"], core.RUNNING))
    assert done["changes"] == [{"key": "db", "before": "shut_off", "after": "running"}] and db.active
    with pytest.raises(core.GuestStateError, match="guest broken: starting it failed: internal error: process exited"):
        returned(decide(conn, ["broken"], core.RUNNING))


def test_a_guest_named_twice_by_name_and_uuid_is_one_guest():
    db = guest("db", uuid_tail=7)
    done, _warnings = returned(decide(connection(db), ["db", "00000000-0000-4000-8000-000000000007"], core.SHUT_OFF))
    assert [change["key"] for change in done["changes"]] == ["db"] and db.calls == [("shutdown",)]


@pytest.mark.parametrize("guests, state, timeout, message", [
    (["db"], "paused", 300, "state: 'paused'; valid: running, shut_off"),
    ([""], "shut_off", 300, "guests: '' is not a guest name or UUID"),
    (["db"], "shut_off", 0, "timeout: 0; give the seconds to wait, 1 to 86400"),
    (["db"], "shut_off", True, "timeout: True; give the seconds to wait"),
])
def test_bad_input_is_refused_before_libvirt_is_asked(guests, state, timeout, message):
    with pytest.raises(core.GuestStateError) as caught:
        core.validate(guests, state, timeout)
    assert message in str(caught.value)


def test_an_unknown_guest_fails_before_any_guest_is_touched():
    db = guest("db")
    with pytest.raises(Exception, match="guests: no libvirt domain nosuch on this host .*its domains: db"):
        core.decide(connection(db), ["db", "nosuch"], core.SHUT_OFF)
    assert db.calls == []
