# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Guests shut down, and started again, around work that needs their disks at rest. Private.

A shutdown is a request to the guest's OS (ACPI): a guest may take its time or never answer,
so every wait has a limit. A guest still running at the limit is powered off only when the
operator allowed it (``force_off``); otherwise the guests this call shut down are started again
and the call fails naming the one that did not stop, so the host is as it was. Starting is
checked the same way: the guest must be running within the limit.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

RUNNING = "running"
SHUT_OFF = "shut_off"
STATES = (RUNNING, SHUT_OFF)


class GuestStateError(Exception):
    """Bad input, or a guest that did not reach the state in time; the message names it."""


def validate(guests, state, timeout):
    if state not in STATES:
        raise GuestStateError("state: %r; valid: %s" % (state, ", ".join(STATES)))
    bad = [guest for guest in guests if not isinstance(guest, str) or not guest.strip()]
    if bad:
        raise GuestStateError("guests: %r is not a guest name or UUID" % (bad[0],))
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
        raise GuestStateError("timeout: %r; give the seconds to wait, 1 to 86400" % (timeout,))


def shown(active):
    return RUNNING if active else SHUT_OFF


def wait(domains, running, timeout, clock=time.monotonic, sleep=time.sleep, poll=1.0):
    """The domains not yet in the state after waiting up to timeout seconds."""
    deadline = clock() + timeout
    left = [domain for domain in domains if domain.is_active() != running]
    while left and clock() < deadline:
        sleep(poll)
        left = [domain for domain in left if domain.is_active() != running]
    return left


def _call(domain, action, what):
    try:
        action()
    except Exception as exc:  # libvirt's error class belongs to the module it was imported from
        raise GuestStateError("guest %s: %s failed: %s" % (domain.name, what, exc))


def decide(conn, guests, state, timeout=300, force_off=False, clock=time.monotonic, sleep=time.sleep):
    """The plan that leaves every guest of guests (names or UUIDs) in state."""
    validate(guests, state, timeout)
    domains = []
    for guest in guests:
        domain = conn.domain(guest, option="guests")
        if domain.name not in [known.name for known in domains]:
            domains.append(domain)
    running = state == RUNNING
    moving = [domain for domain in domains if domain.active != running]
    result = dict(changes=[dict(key=domain.name, before=shown(domain.active), after=state) for domain in moving],
                  forced_off=[])

    def shut_off():
        for domain in moving:
            _call(domain, domain.shutdown, "the shutdown request")
        late = wait(moving, False, timeout, clock, sleep)
        if late and not force_off:
            stopped = [domain for domain in moving if domain not in late]
            for domain in stopped:
                _call(domain, domain.start, "starting it again")
            raise GuestStateError(
                "guest %s did not shut down within %d s (its OS did not answer the ACPI request); "
                "allow force_off to power it off, or give a longer timeout. %s" % (
                    ", ".join(domain.name for domain in late), timeout,
                    "The guests this call shut down run again: %s" % ", ".join(d.name for d in stopped)
                    if stopped else "No guest was stopped"))
        for domain in late:
            _call(domain, domain.destroy, "powering it off")
            result["forced_off"].append(domain.name)
        if late:
            # what applying learned: the runner reports the plan's warnings after apply
            plan.warnings.append("powered off after %d s without an answer to the shutdown request: %s"
                                 % (timeout, ", ".join(result["forced_off"])))
        still = wait(late, False, timeout, clock, sleep)
        if still:
            raise GuestStateError("guest %s still runs after being powered off" % ", ".join(d.name for d in still))

    def start():
        for domain in moving:
            _call(domain, domain.start, "starting it")
        late = wait(moving, True, timeout, clock, sleep)
        if late:
            raise GuestStateError("guest %s is not running %d s after it was started"
                                  % (", ".join(domain.name for domain in late), timeout))

    def apply():
        (start if running else shut_off)()
        return result

    diff = dict(before="".join("%s: %s\n" % (domain.name, shown(domain.active)) for domain in moving),
                after="".join("%s: %s\n" % (domain.name, state) for domain in moving),
                before_header="guests", after_header="guests")
    plan = Plan(bool(moving), result, diff, (), apply if moving else None)
    return plan
