#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_firewall
short_description: Keep the host's own nftables table that drops inbound traffic but what is allowed
version_added: 0.1.0
description:
  - Keeps one nftables table of its own (C(table inet kvmsec)) with an input chain whose policy
    is drop - established connections, loopback, ICMP and DHCPv6 answers pass, and the rules
    given in O(allow);
    the table is loaded, kept in O(path) and loaded again at boot by a systemd unit of its own.
  - No other table is touched - libvirt's NAT and forwarding rules and the operator's own stay
    as they are - and the table has no forward chain, so guests' traffic through the host is
    not filtered here. Where other tables hook input too, a packet must pass every one.
  - The table is replaced in one nft transaction, so the host is never without it.
  - The loaded table is compared with the wanted one as nft prints both - the wanted table is
    loaded into a throwaway network namespace for that - so a rule added or removed by hand is a
    change, and writing the same rules another way is none.
  - Before anything is loaded, the address Ansible is connected from and the port it came in on
    must be let in by a rule of O(allow); otherwise the module fails and loads nothing.
author: kvmsec.hardening developers (@kvmsec)
options:
  allow:
    description: What may come in, besides established connections, loopback and ICMP.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: What the rule is for; kept as the rule's comment.
        type: str
        required: true
      protocol:
        description: The protocol.
        type: str
        choices: [tcp, udp]
        default: tcp
      ports:
        description: Ports (V(22)) and ranges (V(49152-49215)).
        type: list
        elements: str
        required: true
      sources:
        description: Addresses and networks (IPv4 and IPv6) it may come from; empty - from anywhere.
        type: list
        elements: str
        default: []
      interfaces:
        description: Interfaces (V(virbr0)) or prefixes (V(virbr*)) it may come in on; empty - any.
        type: list
        elements: str
        default: []
  table:
    description: The name of the table (family C(inet)).
    type: str
    default: kvmsec
  path:
    description: Where the table's nft script is kept, for the unit that loads it at boot.
    type: path
    default: /etc/kvmsec/firewall.nft
  connected_from:
    description:
      - The address Ansible reaches the host from, for the lock-out guard. By default the peer
        of the SSH session the module runs under, found through its C(sshd) (C(sudo) drops
        C(SSH_CONNECTION)); give it when a proxy or NAT stands between.
      - The guard checks the port of that session; a host not reached over SSH has no guard.
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
notes:
  - Needs C(nft) (package C(nftables)), C(unshare) and systemd. On hosts run by firewalld the
    table adds to firewalld's, which must let in the same traffic.
seealso:
  - name: nft(8)
    description: The rule language and C(nft list table).
    link: https://www.netfilter.org/projects/nftables/manpage.html
  - module: kvmsec.hardening.libvirt_conf
"""

EXAMPLES = r"""
- name: SSH only from the management network, DHCP and DNS for guests on libvirt's bridges
  kvmsec.hardening.host_firewall:
    allow:
      - {name: ssh, ports: [22], sources: [192.0.2.0/24]}
      - {name: guest dns, protocol: udp, ports: [53, 67], interfaces: ["virbr*"]}
      - {name: guest dns tcp, ports: [53], interfaces: ["virbr*"]}
"""

RETURN = r"""
table:
  description: The table, as nft names it.
  returned: always
  type: str
  sample: inet kvmsec
path:
  description: The table's nft script.
  returned: always
  type: str
changes:
  description: What differed (check mode - would) - C(table) (the loaded rules), C(file), C(unit), C(enabled).
  returned: always
  type: list
  elements: str
  sample: [table, file]
connected_from:
  description: The connection the lock-out guard checked (C(null) when Ansible does not come over SSH).
  returned: always
  type: dict
  sample: {"address": "192.0.2.10", "port": 22}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils import _host_firewall as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan, run


def command(module, args, what, data=None):
    rc, stdout, stderr = module.run_command(args, data=data)
    if rc != 0:
        raise core.HostFirewallError("%s failed (exit %d): %s" % (what, rc, (stderr or stdout).strip()))
    return stdout


def loaded_table(module, nft, table):
    """The host's table as nft prints it, or None when there is none."""
    rc, stdout, stderr = module.run_command([nft, "-s", "list", "table", "inet", table])
    if rc != 0 and "No such file or directory" in stderr:
        return None
    if rc != 0:
        raise core.HostFirewallError("nft list table inet %s failed (exit %d): %s" % (table, rc, stderr.strip()))
    return stdout


def wanted_table(module, nft, table, script):
    """The table as nft would hold it: loaded and printed in a network namespace of its own."""
    unshare = module.get_bin_path("unshare", required=True)
    return command(module, [unshare, "--net", "--", "sh", "-c", '"$1" -f - && "$1" -s list table inet "$2"',
                            "sh", nft, table], "nft (checking the table in a scratch namespace)", data=script)


def connection(module):
    given = module.params["connected_from"]
    found = core.ssh_connection() or core.from_environment(os.environ.get("SSH_CONNECTION"))
    if given:
        return core.given_connection(given, found["port"] if found else 22)
    return found


def decide(module):
    table = core.check_table(module.params["table"])
    rules = core.parse_rules(module.params["allow"])
    session = connection(module)
    core.guard(rules, session)
    nft = module.get_bin_path("nft")
    if not nft:
        raise core.HostFirewallError("nft not found: install the nftables package")
    systemctl = module.get_bin_path("systemctl", required=True)
    path = module.params["path"]
    unit_name = "%s-firewall.service" % table
    unit_path = os.path.join("/etc/systemd/system", unit_name)
    script = core.render(table, rules)
    unit = core.unit_text(table, nft, path)
    before = loaded_table(module, nft, table)
    after = wanted_table(module, nft, table, script)
    old_script = _files.read_text(path) if os.path.exists(path) else None
    enabled = module.run_command([systemctl, "is-enabled", "--quiet", unit_name])[0] == 0
    changes = [what for what, differs in (("table", before != after), ("file", old_script != script),
                                          ("unit", _files.read_text(unit_path, "") != unit), ("enabled", not enabled))
               if differs]
    result = dict(table="inet %s" % table, path=path, changes=changes, connected_from=session)
    diff = dict(before=before or "", after=after, before_header="table inet %s (loaded)" % table,
                after_header="table inet %s (wanted)" % table)
    warnings = ["host_firewall: rule '%s' lets %s in from anywhere; give it sources to narrow it" % (
        rule["name"], core.describe(rule)) for rule in rules if not rule["sources"] and not rule["interfaces"]]

    def apply():
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        _files.atomic_write(path, script, mode=0o600)
        module.set_default_selinux_context(path, False)
        if "table" in changes:
            try:
                command(module, [nft, "-f", path], "nft -f %s" % path)
            except core.HostFirewallError as exc:
                if old_script is None:
                    os.unlink(path)
                else:
                    _files.atomic_write(path, old_script)
                raise core.HostFirewallError("%s; the loaded table and %s are as they were" % (exc, path))
        if "unit" in changes:
            _files.atomic_write(unit_path, unit)
            module.set_default_selinux_context(unit_path, False)
            command(module, [systemctl, "daemon-reload"], "systemctl daemon-reload")
        if "enabled" in changes or "unit" in changes:
            command(module, [systemctl, "enable", "--quiet", unit_name], "systemctl enable %s" % unit_name)
        return result
    return Plan(bool(changes), result, diff, warnings, apply if changes else None)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            allow=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                protocol=dict(type="str", choices=["tcp", "udp"], default="tcp"),
                ports=dict(type="list", elements="str", required=True),
                sources=dict(type="list", elements="str", default=[]),
                interfaces=dict(type="list", elements="str", default=[]),
            )),
            table=dict(type="str", default="kvmsec"),
            path=dict(type="path", default="/etc/kvmsec/firewall.nft"),
            connected_from=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.HostFirewallError,), "host_firewall")


if __name__ == "__main__":
    main()
