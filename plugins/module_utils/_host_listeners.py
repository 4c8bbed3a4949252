# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What listens on the host, compared with what the baseline expects. Private to the collection.

Read from the kernel's own tables (``/proc/net/tcp``, ``tcp6``, ``udp``, ``udp6``), as ``ss``
reads them, so no tool has to be installed: TCP sockets in the LISTEN state and UDP sockets that
are not connected to a peer (UDP has no listening state; an unconnected socket takes datagrams
from anyone). Each socket is named with the processes that hold it, from ``/proc/PID/fd``: a
socket that systemd activates is held by systemd and, once started, by the daemon too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os
import re
import sys

from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

TABLES = (("tcp", "tcp", 4), ("tcp", "tcp6", 6), ("udp", "udp", 4), ("udp", "udp6", 6))
TCP_LISTEN = "0A"
PROTOCOLS = ("tcp", "udp")
SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")
RULE_KEYS = ("name", "protocol", "ports", "addresses", "processes")


class ListenersError(Exception):
    """Bad input; the message names the option and what is valid."""


class Listener(object):
    def __init__(self, protocol, address, port, inode, processes=()):
        self.protocol = protocol
        self.address = address
        self.port = port
        self.inode = inode
        self.processes = sorted(set(processes))

    @property
    def endpoint(self):
        return ("[%s]:%d" if ":" in self.address else "%s:%d") % (self.address, self.port)

    def describe(self):
        return "%s %s (%s)" % (self.protocol, self.endpoint, ", ".join(self.processes) or "no process")

    def as_dict(self):
        return dict(protocol=self.protocol, address=self.address, port=self.port, processes=self.processes)


def decode_address(text, family, byteorder=sys.byteorder):
    """The kernel's hex address, printed as 32-bit words in the host's byte order, as text; an
    IPv4 address mapped into IPv6 (a dual-stack socket's peer form) as the IPv4 address."""
    raw = bytes.fromhex(text)
    if byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if family == 4:
        return str(ipaddress.IPv4Address(raw))
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


def parse_table(text, protocol, family):
    """(address, port, inode) of the listening sockets in one /proc/net table's text."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        address, port = local.split(":")
        remote_port = int(remote.split(":")[1], 16)
        listening = state == TCP_LISTEN if protocol == "tcp" else remote_port == 0
        if listening:
            found.append((decode_address(address, family), int(port, 16), inode))
    return found


def socket_holders(proc="/proc"):
    """{socket inode: [process names]} from every process's open files."""
    holders = {}
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(os.path.join(proc, pid, "comm")) as handle:
                name = handle.read().strip()
            fds = os.listdir(os.path.join(proc, pid, "fd"))
        except (IOError, OSError):
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                match = SOCKET_LINK.match(os.readlink(os.path.join(proc, pid, "fd", fd)))
            except OSError:
                continue
            if match:
                holders.setdefault(int(match.group(1)), []).append(name)
    return holders


def read_listeners(proc="/proc"):
    """Every listening socket of the host, ordered by protocol, port and address."""
    holders = socket_holders(proc)
    listeners = []
    for protocol, table, family in TABLES:
        try:
            with open(os.path.join(proc, "net", table)) as handle:
                text = handle.read()
        except (IOError, OSError):
            continue  # no IPv6 on this host
        for address, port, inode in parse_table(text, protocol, family):
            listeners.append(Listener(protocol, address, port, inode, holders.get(inode, ())))
    return sorted(listeners, key=lambda item: (item.protocol, item.port, item.address))


def _ports(text, option):
    match = re.match(r"^(\d+)(?:-(\d+))?$", str(text).strip())
    low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
    if not match or not 1 <= low <= high <= 65535:
        raise ListenersError("%s: %r is not a port or a range of ports (1-65535, LOW-HIGH)" % (option, text))
    return low, high


def validate(allow):
    """The rules as (name, protocols, port ranges, networks, processes); bad input is refused
    naming the rule and the key."""
    rules = []
    for index, rule in enumerate(allow):
        where = "allow[%d]" % index
        if not isinstance(rule, dict):
            raise ListenersError("%s: a rule is a dictionary with %s, not %r" % (where, ", ".join(RULE_KEYS), rule))
        unknown = sorted(set(rule) - set(RULE_KEYS))
        if unknown:
            raise ListenersError("%s: unknown key %s; a rule has %s" % (where, unknown[0], ", ".join(RULE_KEYS)))
        name = rule.get("name")
        if not name or not isinstance(name, str):
            raise ListenersError("%s.name: give the rule a name, shown in the result" % where)
        protocol = rule.get("protocol")
        if protocol not in (None,) + PROTOCOLS:
            raise ListenersError("%s.protocol: %r is not tcp or udp (leave it out for both)" % (where, protocol))
        lists = {}
        for key in ("ports", "addresses", "processes"):
            value = rule.get(key) or []
            if not isinstance(value, list):
                raise ListenersError("%s.%s: give a list, not %r" % (where, key, value))
            lists[key] = value
        ports = [_ports(port, "%s.ports" % where) for port in lists["ports"]]
        networks = []
        for address in lists["addresses"]:
            try:
                networks.append(ipaddress.ip_network(str(address), strict=False))
            except ValueError:
                raise ListenersError("%s.addresses: %r is not an address or a network" % (where, address))
        processes = [str(process) for process in lists["processes"]]
        if not (ports or networks or processes):
            raise ListenersError("%s: give ports, addresses or processes: a rule with none would let "
                                 "anything listen" % where)
        rules.append((name, (protocol,) if protocol else PROTOCOLS, ports, networks, processes))
    return rules


def allowed_by(listener, rule):
    name, protocols, ports, networks, processes = rule
    address = ipaddress.ip_address(listener.address)
    return (listener.protocol in protocols
            and (not ports or any(low <= listener.port <= high for low, high in ports))
            and (not networks or any(address.version == net.version and address in net for net in networks))
            and (not processes or (listener.processes and set(listener.processes) <= set(processes))))


def decide(listeners, allow, allow_loopback=True):
    """A read-only plan: every listener, with the rule that expects it, and the unexpected ones."""
    rules = validate(allow)
    found, problems = [], []
    for listener in listeners:
        entry = listener.as_dict()
        if allow_loopback and ipaddress.ip_address(listener.address).is_loopback:
            entry["expected"] = "loopback"
        else:
            entry["expected"] = next((rule[0] for rule in rules if allowed_by(listener, rule)), None)
        if entry["expected"] is None:
            problems.append("%s: not expected" % listener.describe())
        found.append(entry)
    return Plan(False, dict(listeners=found, problems=problems))
