# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of kvmsec.hardening.control_results: the run's control results, on the controller."""

from __future__ import annotations

import datetime
import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.vars import load_extra_vars

from ansible_collections.kvmsec.hardening.plugins.callback.control_results import RECORDS_ENV
from ansible_collections.kvmsec.hardening.plugins.plugin_utils import _controls as core

ARGUMENT_SPEC = dict(
    catalogue=dict(type="list", elements="dict", required=True),
    hosts=dict(type="list", elements="str", required=True),
    mode=dict(type="str", required=True, choices=["audit", "harden"]),
    baseline=dict(type="path"),
)
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# each host's own settings, from the inventory, with the default when it sets none
HOST_SETTINGS = (("kvmsec_skip_controls", []), ("kvmsec_waivers", []), ("kvmsec_fail_severity", "low"),
                 ("kvm_host_facts", {}))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        records = read_records()
        catalogue = args["catalogue"]
        roles = sorted(set(control["role"] for control in catalogue))
        hostvars = task_vars["hostvars"]
        reports, gate = [], set()
        for host in args["hosts"]:
            settings = dict((name, self._host_var(hostvars, host, name, default)) for name, default in HOST_SETTINGS)
            try:
                waivers = core.check_inputs(catalogue, settings["kvmsec_skip_controls"],
                                            settings["kvmsec_waivers"], settings["kvmsec_fail_severity"])
            except core.ControlInputError as exc:
                raise AnsibleActionFail("%s: %s" % (host, exc))
            context = {
                "mode": args["mode"],
                "skip": settings["kvmsec_skip_controls"],
                "run_tags": records["run_tags"],
                "skip_tags": records["skip_tags"],
                "roles_enabled": dict((role, self._host_var(hostvars, host, role + "_enabled", True)) for role in roles),
                "waivers": waivers,
                "today": datetime.date.today(),
            }
            reports.append(core.host_report(host, catalogue, records["hosts"].get(host, []), context,
                                            settings["kvm_host_facts"], settings["kvmsec_fail_severity"]))
            gate.add(settings["kvmsec_fail_severity"])
        generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        severity = min(gate, key=core.GATE_SEVERITIES.index) if gate else "none"
        report = core.fleet_report(reports, catalogue, args["mode"], severity, generated, collection_version())
        if args["baseline"]:
            report["changes"] = core.compare(read_json(args["baseline"], "baseline"), report)
        result.update(changed=False, report=report, artifacts=core.job_artifacts(report))
        return result

    def _host_var(self, hostvars, host, name, default):
        """A host's value as its own tasks would see it: hostvars hold its inventory, facts and
        extra vars, but not the vars of the play (an importing playbook's vars), which win over
        the inventory and lose to extra vars."""
        play_vars = self._task.get_play().vars
        if name in play_vars and name not in load_extra_vars(self._loader):
            return self._templar.template(play_vars[name])
        return self._templar.template(hostvars[host].get(name, default))


def collection_version():
    """The version an installed collection records in MANIFEST.json, or a source tree in galaxy.yml."""
    try:
        with open(os.path.join(COLLECTION_ROOT, "MANIFEST.json")) as handle:
            return json.load(handle)["collection_info"]["version"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        with open(os.path.join(COLLECTION_ROOT, "galaxy.yml")) as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("version:")), "")
    except OSError:
        return ""


def read_records():
    path = os.environ.get(RECORDS_ENV)
    if not path:
        raise AnsibleActionFail(
            "no control records in this run: the callback plugin kvmsec.hardening.control_results did not run."
            " The collection's playbooks load it by themselves; a playbook of your own needs"
            " callbacks_enabled = kvmsec.hardening.control_results in ansible.cfg"
            " (or ANSIBLE_CALLBACKS_ENABLED).")
    return read_json(path, "control records")


def read_json(path, what):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise AnsibleActionFail("cannot read the %s %s: %s" % (what, path, exc))
