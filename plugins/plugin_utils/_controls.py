# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Control results from the tasks that carry each control's ID. Private to the collection.

The roles tag every task of a control with its ID. The callback plugin ``control_results``
records what each such task did (``observe``); ``evaluate`` turns those observations into one
result per catalogue control and host. In check mode a task that would change something is
exactly what the host lacks, so the audit is the enforcing code itself, not a second copy.
Pure Python: no Ansible import, unit-tested on its own.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re

SCHEMA = "kvmsec.hardening/report/1"
SEVERITIES = ("critical", "high", "medium", "low")
GATE_SEVERITIES = SEVERITIES + ("none",)
STATUSES = ("fail", "error", "waived", "fixed", "pass", "not applicable", "skipped")
VERDICT_TAG = "kvmsec_verdict"
# what the catalogue's IDs look like (KVM-HOST-01, SVIRT-02): the callback records tasks whose
# tags look like one, evaluate() keeps those the catalogue has
CONTROL_ID = re.compile(r"^[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-[0-9]+$")
WAIVER_KEYS = ("control", "justification", "owner", "expires")
# evidence keys worth showing from a result that has no diff, in this order
RESULT_KEYS = ("msg", "changes", "cmd", "skipped_changes", "warnings")
TEXT_LIMIT = 4000


class ControlInputError(ValueError):
    """Bad operator input (waivers, skip list, gate): the message says what is valid."""


def control_tags(tags):
    return sorted(tag for tag in tags if CONTROL_ID.match(str(tag)))


def observe(task_name, action, tags, status, result, item=None, args=None):
    """One task outcome as the callback records it (JSON-safe, small).

    args: the task's arguments, for commands that say nothing in check mode but what they
    would run.
    """
    record = {
        "task": task_name,
        "action": action,
        "controls": control_tags(tags),
        "verdict": VERDICT_TAG in tags,
        "status": status,
        "item": item,
    }
    if result.get("censored"):
        record["censored"] = True
        return record
    for key in ("false_condition", "skip_reason"):
        if result.get(key) not in (None, ""):
            record[key] = str(result[key])
    if "reboot_required" in result:
        record["reboot_required"] = bool(result["reboot_required"])
    text = "\n".join(part for part in (evidence_text(result), command_text(action, args or {})) if part)
    if text:
        record["text"] = text
    return record


def command_text(action, args):
    if action.rsplit(".", 1)[-1] not in ("command", "shell"):
        return ""
    line = args.get("argv") or args.get("cmd") or args.get("_raw_params")
    if not line:
        return ""
    text = "runs: " + (" ".join(map(str, line)) if isinstance(line, list) else str(line))
    if args.get("stdin"):
        text += "\nwith input:\n" + str(args["stdin"])
    return text


def evidence_text(result):
    """What a task would change or why it failed, as text a person can read."""
    parts = [render_diff(diff) for diff in as_list(result.get("diff"))]
    parts = [part for part in parts if part]
    if not parts:
        for key in RESULT_KEYS:
            value = result.get(key)
            if value in (None, "", [], {}):
                continue
            parts.append(value if isinstance(value, str) else "%s: %s" % (key, json.dumps(value, sort_keys=True, default=str)))
            if key == "msg":
                break
    text = "\n".join(parts)
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + "\n[... %d more characters]" % (len(text) - TEXT_LIMIT)
    return text


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def render_diff(diff):
    """A task diff (before/after with headers, or prepared text) as a unified diff."""
    if not isinstance(diff, dict):
        return str(diff)
    if diff.get("prepared"):
        return str(diff["prepared"])
    before, after = diff.get("before"), diff.get("after")
    if before is None and after is None:
        return ""
    if isinstance(before, dict) and isinstance(after, dict):
        return changed_values(before, after)
    before_text = as_text(before)
    after_text = as_text(after)
    if before_text == after_text:
        return ""
    lines = difflib.unified_diff(
        before_text.splitlines(), after_text.splitlines(),
        fromfile="before: %s" % diff.get("before_header", ""), tofile="after: %s" % diff.get("after_header", ""),
        lineterm="", n=1)
    return "\n".join(lines)


def changed_values(before, after):
    """Structured diffs (settings per guest, per device) as one line per value that differs."""
    old, new = flatten(before), flatten(after)
    return "\n".join("%s: %s -> %s" % (key, json.dumps(old.get(key), default=str), json.dumps(new.get(key), default=str))
                     for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))


def flatten(value, prefix=""):
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat = {}
    for key, inner in value.items():
        flat.update(flatten(inner, "%s.%s" % (prefix, key) if prefix else str(key)))
    return flat


def as_text(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def parse_date(value, what):
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        raise ControlInputError("%s: %r is not a date; write it as YYYY-MM-DD" % (what, value))


def check_inputs(catalogue, skip, waivers, fail_severity):
    """Refuse bad operator input with a message naming the variable and what is valid."""
    known = [control["id"] for control in catalogue]
    if not isinstance(skip, list):
        raise ControlInputError("kvmsec_skip_controls must be a list of control IDs, not %r" % (skip,))
    unknown = [cid for cid in skip if cid not in known]
    if unknown:
        raise ControlInputError("kvmsec_skip_controls: unknown control %s; the catalogue has %s"
                                % (", ".join(map(str, unknown)), ", ".join(known)))
    if fail_severity not in GATE_SEVERITIES:
        raise ControlInputError("kvmsec_fail_severity: %r is not a severity; use one of %s"
                                % (fail_severity, ", ".join(GATE_SEVERITIES)))
    if not isinstance(waivers, list):
        raise ControlInputError("kvmsec_waivers must be a list of waivers (control, justification, owner, expires)")
    parsed = {}
    for index, waiver in enumerate(waivers):
        where = "kvmsec_waivers[%d]" % index
        if not isinstance(waiver, dict):
            raise ControlInputError("%s must be a mapping with %s" % (where, ", ".join(WAIVER_KEYS)))
        missing = [key for key in WAIVER_KEYS if not str(waiver.get(key) or "").strip()]
        if missing:
            raise ControlInputError("%s lacks %s: every waiver needs %s"
                                    % (where, ", ".join(missing), ", ".join(WAIVER_KEYS)))
        if waiver["control"] not in known:
            raise ControlInputError("%s: unknown control %s; the catalogue has %s"
                                    % (where, waiver["control"], ", ".join(known)))
        if waiver["control"] in parsed:
            raise ControlInputError("%s: %s is waived twice; keep one waiver per control" % (where, waiver["control"]))
        parsed[waiver["control"]] = {
            "justification": str(waiver["justification"]),
            "owner": str(waiver["owner"]),
            "expires": parse_date(waiver["expires"], where + ".expires"),
        }
    return parsed


def selected(control_id, run_tags, skip_tags):
    """Whether --tags/--skip-tags let the control's tasks run, and why not."""
    if control_id in skip_tags:
        return "--skip-tags %s" % control_id
    wanted = [tag for tag in run_tags if tag != "all"]
    if wanted and control_id not in wanted and "always" not in wanted:
        return "not selected by --tags %s" % ",".join(wanted)
    return None


def evaluate_control(control, records, mode):
    """status, reason, evidence of one control from its tasks' records on one host."""
    failed = [r for r in records if r["status"] in ("failed", "unreachable")]
    changed = [r for r in records if r["status"] == "changed"]
    ran = [r for r in records if r["status"] != "skipped"]
    if not records:
        return "error", "no task of this control ran on the host: an earlier task failed or the host was unreachable", []
    errors = [r for r in failed if not r["verdict"]]
    if errors:
        return "error", "could not be checked: %s failed" % quote(errors[0]["task"]), evidence(errors, mode)
    if failed:
        # what the control's other tasks would change (or changed) belongs to the same finding
        return "fail", "%s: the host does not meet it" % quote(failed[0]["task"]), evidence(failed + changed, mode)
    if changed:
        if mode == "audit":
            return "fail", "%d task%s would change the host" % plural(changed), evidence(changed, mode)
        return "fixed", "%d task%s changed the host" % plural(changed), evidence(changed, mode)
    if not ran:
        condition = next((r.get("false_condition") for r in records if r.get("false_condition")), None)
        reason = "applies to %s" % control.get("applies_to", "some hosts")
        return "not applicable", reason + ("; skipped because %s is false" % condition if condition else ""), []
    return "pass", "nothing would change" if mode == "audit" else "nothing to change", []


def quote(task):
    return "task '%s'" % task


def plural(items):
    return len(items), "" if len(items) == 1 else "s"


def evidence(records, mode):
    return [{"task": r["task"] + (" (%s)" % r["item"] if r.get("item") else ""),
             "outcome": outcome(r, mode),
             "text": "(hidden: the task is no_log)" if r.get("censored") else r.get("text", "")}
            for r in records]


def outcome(record, mode):
    if record["status"] == "changed":
        return "would change" if mode == "audit" else "changed"
    return "failed" if record["status"] == "unreachable" else record["status"]


def apply_waiver(result, waiver, today):
    if waiver is None:
        return result
    expired = waiver["expires"] < today
    result["waiver"] = dict(waiver, expires=waiver["expires"].isoformat(), expired=expired)
    if result["status"] != "fail":
        if result["status"] == "pass":
            result["reason"] += "; the waiver is no longer needed"
        return result
    if expired:
        result["reason"] += "; its waiver expired on %s" % waiver["expires"].isoformat()
    else:
        result["status"] = "waived"
        result["reason"] = "waived until %s by %s: %s (%s)" % (
            waiver["expires"].isoformat(), waiver["owner"], waiver["justification"], result["reason"])
    return result


def evaluate(catalogue, records, context):
    """One result per catalogue control for one host.

    context: mode (audit or harden), skip (IDs), run_tags, skip_tags, roles_enabled (role ->
    bool), waivers (from check_inputs), today (date).
    """
    by_control = {}
    for record in records:
        for cid in record["controls"]:
            by_control.setdefault(cid, []).append(record)
    results = []
    for control in catalogue:
        cid = control["id"]
        not_run = None
        if cid in context["skip"]:
            not_run = "listed in kvmsec_skip_controls"
        elif not context["roles_enabled"].get(control["role"], True):
            not_run = "the %s role is off (%s_enabled: false)" % (control["role"], control["role"])
        else:
            not_run = selected(cid, context["run_tags"], context["skip_tags"])
        if not_run:
            status, reason, found = "skipped", not_run, []
        else:
            status, reason, found = evaluate_control(control, by_control.get(cid, []), context["mode"])
        result = {
            "id": cid,
            "title": control["title"],
            "severity": control["severity"],
            "family": control.get("family"),
            "role": control["role"],
            "task_file": control["task_file"],
            "status": status,
            "reason": reason,
            "evidence": found,
            "reboot_required": reboot_required(by_control.get(cid, [])) if not not_run else False,
            "remediation": remediation(control),
            "waiver": None,
            "references": list(control.get("references") or []),
        }
        results.append(apply_waiver(result, context["waivers"].get(cid), context["today"]))
    return results


def reboot_required(records):
    """What the control's last task that knows says: a reboot would bring what the boot loader
    now has (a task after a reboot says it no longer is)."""
    said = [r["reboot_required"] for r in records if "reboot_required" in r]
    return said[-1] if said else False


def remediation(control):
    impact = control.get("impact") or {}
    effects = [text for key, text in (("reboot", "may need a reboot"),
                                      ("restarts_libvirtd", "restarts libvirtd"),
                                      ("restarts_guests", "may restart guests")) if impact.get(key)]
    return "ansible-playbook harden-kvm.yml --tags %s (role %s, %s)%s" % (
        control["id"], control["role"], control["task_file"], "; " + ", ".join(effects) if effects else "")


def summarize(results):
    counts = dict((status, 0) for status in STATUSES)
    for result in results:
        counts[result["status"]] += 1
    return counts


def gate_failing(results, fail_severity):
    """IDs of controls that fail (or could not be checked) at or above the gate's severity."""
    if fail_severity == "none":
        return []
    limit = SEVERITIES.index(fail_severity)
    return [r["id"] for r in results
            if r["status"] in ("fail", "error") and SEVERITIES.index(r["severity"]) <= limit]


def host_report(host, catalogue, records, context, facts, fail_severity):
    results = evaluate(catalogue, records, context)
    return {
        "schema": SCHEMA,
        "host": host,
        "mode": context["mode"],
        "gate_severity": fail_severity,
        "gate_failing": gate_failing(results, fail_severity),
        "summary": summarize(results),
        "controls": results,
        "facts": facts,
    }


def fleet_report(host_reports, catalogue, mode, fail_severity, generated, version):
    """The run's report over every host: what the HTML and JUnit templates render; `changes` is
    filled by compare() when there is a baseline."""
    totals = dict((status, 0) for status in STATUSES)
    failing = []
    for report in host_reports:
        for status, count in report["summary"].items():
            totals[status] += count
        failing.extend({"host": report["host"], "id": cid} for cid in report["gate_failing"])
    return {
        "schema": SCHEMA,
        "generated": generated,
        "mode": mode,
        "collection_version": version,
        "severities": list(SEVERITIES),
        "statuses": list(STATUSES),
        "gate": {"severity": fail_severity, "passed": not failing, "failing": failing},
        "totals": totals,
        "catalogue": [{"id": c["id"], "title": c["title"], "severity": c["severity"], "family": c.get("family")}
                      for c in catalogue],
        "hosts": sorted(host_reports, key=lambda report: report["host"]),
        "changes": None,
    }


def job_artifacts(report):
    """What a run publishes as its job's artifacts (set_stats): the gate, the totals and each
    host's control statuses. AWX keeps artifacts with the job and hands them to the next node of a
    workflow; evidence, diffs and facts stay in the report files, so a fleet's artifacts stay
    small (about 25 bytes per host and control)."""
    return {
        "schema": report["schema"],
        "mode": report["mode"],
        "generated": report["generated"],
        "collection_version": report["collection_version"],
        "gate": report["gate"],
        "totals": report["totals"],
        "hosts": dict((h["host"], dict((c["id"], c["status"]) for c in h["controls"])) for h in report["hosts"]),
    }


def compare(before, after):
    """Controls whose status moved between two fleet reports, per host (hosts in either)."""
    def statuses(report):
        return dict((h["host"], dict((c["id"], c["status"]) for c in h["controls"])) for h in report["hosts"])
    old, new = statuses(before), statuses(after)
    hosts = []
    for host in sorted(set(old) | set(new)):
        was, now = old.get(host, {}), new.get(host, {})
        moved = [{"id": cid, "before": was.get(cid, "absent"), "after": now.get(cid, "absent")}
                 for cid in sorted(set(was) | set(now)) if was.get(cid) != now.get(cid)]
        if moved:
            hosts.append({"host": host, "changes": moved})
    return {"baseline_generated": before.get("generated"), "hosts": hosts}
