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
from ansible_collections.kvmsec.hardening.plugins.module_utils import _host_firewall as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def decide(module):
    params = module.params
    tools = dict((tool, module.get_bin_path(tool)) for tool in ("nft", "unshare", "systemctl"))
    session = core.connection(params["connected_from"], os.environ.get("SSH_CONNECTION"))
    return core.decide(module_runner(module), tools, params["table"], params["allow"], params["path"], session,
                       relabel=lambda path: module.set_default_selinux_context(path, False))


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
