# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: control_results
short_description: One result per baseline control and host, from the tasks that enforce it
version_added: 0.1.0
description:
  - Runs on the controller at the end of C(harden-kvm.yml) and C(audit-kvm.yml). It reads what the
    callback plugin C(kvmsec.hardening.control_results) recorded of every task tagged with a control
    ID and gives each catalogue control a result per host.
  - C(pass) - every task of the control ran and none changed (or would change) the host.
  - C(fail) - in an audit (check mode) a task would change the host, or a verdict task (tagged
    C(kvmsec_verdict)) found the host does not meet the control. The evidence is what would change
    (the task's diff), the verdict's message, or both.
  - C(fixed) - in a hardening run a task changed the host; the evidence is what changed.
  - C(not applicable) - every task of the control was skipped by its condition; the reason is the
    catalogue's C(applies_to) and the condition.
  - C(waived) - it fails, and a waiver of the host's C(kvmsec_waivers) covers it until its expiry date.
    An expired waiver leaves the control failing.
  - C(error) - it could not be checked (a task failed, or none of its tasks ran on the host).
  - C(skipped) - the operator left it out (C(kvmsec_skip_controls), C(--tags), C(--skip-tags), or the
    role's C(<role>_enabled) off).
  - Each host's own C(kvmsec_skip_controls), C(kvmsec_waivers), C(kvmsec_fail_severity) and C(<role>_enabled)
    come from the inventory; bad values fail the task with a message saying what is valid.
author: kvmsec.hardening developers (@kvmsec)
options:
  catalogue:
    description: The control catalogue (C(kvmsec_controls) of C(playbooks/vars/controls.yml)).
    type: list
    elements: dict
    required: true
  hosts:
    description: The hosts to report on. A host with no records gets C(error) for every control it should have run.
    type: list
    elements: str
    required: true
  mode:
    description: C(audit) when the controls ran in check mode, C(harden) when they ran for real.
    type: str
    required: true
    choices: [audit, harden]
  baseline:
    description: An earlier run's C(report.json); the result then lists the controls whose status moved since.
    type: path
attributes:
  check_mode:
    support: full
    details: Reads the run's records on the controller and changes nothing, in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
notes:
  - The report's schema is documented in C(docs/report.md) of the collection.
"""

EXAMPLES = r"""
- name: Work out each control's result on every host
  kvmsec.hardening.control_results:
    catalogue: "{{ kvmsec_controls }}"
    hosts: "{{ groups['kvm_hosts'] }}"
    mode: audit
  register: kvmsec_results
"""

RETURN = r"""
report:
  description: The fleet report (schema C(kvmsec.hardening/report/1)), as written to C(report.json).
  returned: success
  type: dict
  contains:
    gate:
      description: The severity gate, whether it passed and the failing host and control IDs.
      type: dict
      returned: success
    totals:
      description: Count of controls per status over every host.
      type: dict
      returned: success
    hosts:
      description: Per host, C(summary), C(gate_failing), C(facts) and C(controls) (id, title, severity,
        status, reason, evidence, remediation, waiver, references).
      type: list
      elements: dict
      returned: success
    changes:
      description: With O(baseline), per host the controls whose status moved (C(before), C(after)).
      type: dict
      returned: when O(baseline) is set
artifacts:
  description:
    - The report without evidence, diffs and facts, as the collection's playbooks publish it with
      C(ansible.builtin.set_stats) under C(kvmsec_results), the job's artifacts in AWX.
    - C(schema), C(mode), C(generated), C(collection_version), C(gate) and C(totals) as in RV(report),
      and C(hosts), a dict of each host's control IDs and their statuses.
  returned: success
  type: dict
  sample:
    mode: audit
    gate: {severity: low, passed: false, failing: [{host: kvm01, id: KVM-KERNEL-01}]}
    totals: {pass: 27, fail: 1, "not applicable": 1}
    hosts: {kvm01: {KVM-HOST-01: pass, KVM-KERNEL-01: fail}}
"""
