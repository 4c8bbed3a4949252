#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_listeners
short_description: Compare what listens on the host (TCP and UDP) with what is expected
version_added: 0.1.0
description:
  - Reads every listening socket from the kernel's tables (C(/proc/net/tcp), C(tcp6), C(udp),
    C(udp6)) - TCP sockets in the LISTEN state and UDP sockets not connected to a peer - with the
    processes that hold each one, and compares them with O(allow).
  - A socket is expected when it is on a loopback address (with O(allow_loopback)) or when one
    rule of O(allow) matches it. Every other socket is in RV(problems), naming its protocol,
    address, port and processes.
  - Changes nothing - what listens is the business of the services that open it. Run as root to
    see every process's sockets.
author: kvmsec.hardening developers (@kvmsec)
options:
  allow:
    description:
      - The rules that expect a listener. A listener matches a rule when every key the rule gives
        matches it.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: What the rule is for, shown in RV(listeners).
        type: str
        required: true
      protocol:
        description: V(tcp) or V(udp); left out, both.
        type: str
        choices: [tcp, udp]
      ports:
        description: Ports or ranges (C(5900-5999)).
        type: list
        elements: str
      addresses:
        description:
          - Addresses or networks the socket may be bound to; C(0.0.0.0) and C(::) are the
            wildcard addresses themselves, not "any".
        type: list
        elements: str
      processes:
        description:
          - Process names (as C(/proc/PID/comm) has them); every process that holds the socket must
            be one of them.
        type: list
        elements: str
  allow_loopback:
    description: Expect whatever listens on a loopback address, which nothing off the host reaches.
    type: bool
    default: true
extends_documentation_fragment:
  - kvmsec.hardening.info_module
seealso:
  - module: kvmsec.hardening.host_firewall
"""

EXAMPLES = r"""
- name: Compare the host's listeners with what a KVM host needs
  kvmsec.hardening.host_listeners:
    allow:
      - {name: ssh, protocol: tcp, processes: [sshd]}
      - {name: libvirt tls, protocol: tcp, ports: ["16514"], processes: [systemd, libvirtd]}
      - {name: guest dhcp and dns, processes: [dnsmasq]}
  register: listeners

- name: Fail naming what else listens
  ansible.builtin.assert:
    that: listeners.problems == []
    fail_msg: "{{ listeners.problems }}"
"""

RETURN = r"""
listeners:
  description: Every listening socket, by protocol, port and address, with the rule that expects it.
  returned: always
  type: list
  elements: dict
  contains:
    protocol:
      description: C(tcp) or C(udp).
      type: str
    address:
      description: The address it is bound to (C(0.0.0.0), C(::) - every address).
      type: str
    port:
      description: The port.
      type: int
    processes:
      description: The processes that hold it.
      type: list
      elements: str
    expected:
      description: The name of the rule that expects it, C(loopback), or C(null) when nothing does.
      type: str
  sample: [{"protocol": "tcp", "address": "0.0.0.0", "port": 22, "processes": ["sshd"], "expected": "ssh"}]
problems:
  description: The listeners nothing expects, each as protocol, address and port with its processes.
  returned: always
  type: list
  elements: str
  sample: ["tcp 0.0.0.0:8080 (python3): not expected"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _host_listeners as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def main():
    rule = dict(
        name=dict(type="str", required=True),
        protocol=dict(type="str", choices=list(core.PROTOCOLS)),
        ports=dict(type="list", elements="str"),
        addresses=dict(type="list", elements="str"),
        processes=dict(type="list", elements="str"),
    )
    module = AnsibleModule(
        argument_spec=dict(
            allow=dict(type="list", elements="dict", default=[], options=rule),
            allow_loopback=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params

    def decide():
        core.validate(params["allow"])  # before the host is read
        return core.decide(core.read_listeners(), params["allow"], params["allow_loopback"])

    run(module, decide, (core.ListenersError,), "host_listeners")


if __name__ == "__main__":
    main()
