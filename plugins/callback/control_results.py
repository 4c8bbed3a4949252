# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: control_results
type: aggregate
short_description: Records what the tasks of each baseline control did, for the control report
description:
  - Records the outcome of every task tagged with a control ID of the kvmsec baseline (C(KVM-HOST-01),
    C(SVIRT-02), ...) - changed or not, skipped and why, failed and why - with the task's diff.
  - The last play of C(harden-kvm.yml) and C(audit-kvm.yml) turns these records into one result per
    control and host with M(kvmsec.hardening.control_results) and writes the reports.
  - The collection's playbooks load it by themselves (a loader of it sits in C(playbooks/callback_plugins),
    which Ansible loads next to the playbook), so nothing needs enabling. Playbooks of your own that
    use the roles and the report play enable it with C(callbacks_enabled = kvmsec.hardening.control_results).
  - Records hold no secret a task did not already show, and results of C(no_log) tasks are recorded as
    censored. They live in a private temporary directory on the controller for the length of the run.
author: kvmsec.hardening developers (@kvmsec)
"""

import json
import os
import shutil
import tempfile

from ansible import context
from ansible.plugins.callback import CallbackBase

from ansible_collections.kvmsec.hardening.plugins.plugin_utils._controls import control_tags, observe

# Forked workers inherit the controller's environment: this is how the report task finds the
# records of the run it belongs to.
RECORDS_ENV = "KVMSEC_CONTROL_RECORDS"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kvmsec.hardening.control_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self._records = {}
        self._dirty = False
        self._directory = tempfile.mkdtemp(prefix="kvmsec-controls-")
        self._path = os.path.join(self._directory, "records.json")
        os.environ[RECORDS_ENV] = self._path
        self._flush()

    def _flush(self):
        data = {
            "run_tags": sorted(context.CLIARGS.get("tags") or []),
            "skip_tags": sorted(context.CLIARGS.get("skip_tags") or []),
            "hosts": self._records,
        }
        partial = self._path + ".new"
        with open(partial, "w") as handle:
            json.dump(data, handle, default=str)
        os.replace(partial, self._path)
        self._dirty = False

    def _record(self, result, status):
        task = result._task
        tags = list(result.task_fields.get("tags") or task.tags or [])
        if not control_tags(tags):
            return
        outcome = result._result
        host = self._records.setdefault(result._host.get_name(), [])
        items = outcome.get("results") if isinstance(outcome.get("results"), list) else None
        if items is None:
            host.append(observe(task.get_name(), task.action, tags, status, outcome,
                                args=result.task_fields.get("args")))
        else:
            for item in items:
                label = item.get("_ansible_item_label", item.get("item"))
                host.append(observe(task.get_name(), task.action, tags, item_status(item), item,
                                    item=json.dumps(label, default=str) if not isinstance(label, str) else label))
        self._dirty = True

    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_play_start(self, play):
        if self._dirty:
            self._flush()

    def v2_playbook_on_stats(self, stats):
        shutil.rmtree(self._directory, ignore_errors=True)


def item_status(item):
    # as Ansible decides: failed_when wins over the failed an exhausted until leaves behind
    if item.get("failed_when_result", item.get("failed")):
        return "failed"
    if item.get("skipped"):
        return "skipped"
    return "changed" if item.get("changed") else "ok"
