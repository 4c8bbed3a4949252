# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's own nftables table: inbound traffic dropped but for what is allowed. Private.

The table is one of its own (``table inet kvmsec``), so libvirt's NAT and forwarding rules and
the operator's other tables are never flushed, and it holds only an input chain: traffic that
guests send through the host is libvirt's business. Where several tables hook input, a packet
must pass all of them, so this table can only narrow what the others let in.

A table is replaced in one nft transaction (create it if missing, delete it, define it), so the
host is never without it. nft prints a table in a canonical form of its own, not as written, so
the wanted table is loaded into a throwaway network namespace and printed there: what is
compared with the host's table is what nft would hold, not the text that was written.

The lock-out guard: the address Ansible is connected from and the port it connected to must be
let in by a rule before anything is loaded, or the plan is refused.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os
import re
import socket
import struct

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, checked
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan

TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _.,:/-]{0,63}$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\*?$")
PROTOCOLS = ("tcp", "udp")
ESTABLISHED = "01"
UNIT_DIR = "/etc/systemd/system"


class HostFirewallError(Exception):
    """A rule cannot be written, nft refused the table, or the table would lock Ansible out."""


def check_table(table):
    if not TABLE_RE.match(table or ""):
        raise HostFirewallError("table: %r; give a name of letters, digits and _ (up to 32), such as kvmsec" % (table,))
    return table


def _text(value):
    return value if isinstance(value, str) else "%s" % (value,)


def parse_ports(option, ports):
    """Ports as (low, high) pairs from 22, "22" or "49152-49215"."""
    if not ports:
        raise HostFirewallError("%s.ports: empty; give ports (22) or ranges (49152-49215)" % option)
    pairs = []
    for port in ports:
        match = re.match(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$", _text(port).strip())
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
        if not 1 <= low <= high <= 65535:
            raise HostFirewallError("%s.ports: %r is not a port (1-65535) or a range LOW-HIGH" % (option, port))
        pairs.append((low, high))
    return pairs


def parse_sources(option, sources):
    networks = []
    for source in sources or []:
        try:
            networks.append(ipaddress.ip_network(_text(source).strip(), strict=False))
        except ValueError:
            raise HostFirewallError("%s.sources: %r is not an address or network (10.0.0.0/24, 2001:db8::/64)"
                                    % (option, source))
    return networks


def parse_rules(allow):
    """The allow list checked and normalized; errors name the rule."""
    rules = []
    for index, rule in enumerate(allow):
        option = "allow[%d]" % index
        if not isinstance(rule, dict):
            raise HostFirewallError("%s: %r is not a rule (name, protocol, ports, sources, interfaces)" % (option, rule))
        unknown = sorted(set(rule) - {"name", "protocol", "ports", "sources", "interfaces"})
        if unknown:
            raise HostFirewallError("%s: unknown key %s; valid: name, protocol, ports, sources, interfaces"
                                    % (option, ", ".join(unknown)))
        name = _text(rule.get("name") or "")
        if not NAME_RE.match(name):
            raise HostFirewallError("%s.name: %r; give up to 64 letters, digits, spaces or _.,:/-" % (option, name))
        option = "allow[%d] (%s)" % (index, name)
        protocol = rule.get("protocol") or "tcp"
        if protocol not in PROTOCOLS:
            raise HostFirewallError("%s.protocol: %r; valid: tcp, udp" % (option, protocol))
        interfaces = [_text(interface) for interface in rule.get("interfaces") or []]
        for interface in interfaces:
            if not INTERFACE_RE.match(interface):
                raise HostFirewallError("%s.interfaces: %r is not an interface name (virbr0) or prefix (virbr*)"
                                        % (option, interface))
        rules.append({"name": name, "protocol": protocol, "ports": parse_ports(option, rule.get("ports")),
                      "sources": parse_sources(option, rule.get("sources")), "interfaces": interfaces})
    return rules


def _set(items):
    return items[0] if len(items) == 1 else "{ %s }" % ", ".join(items)


def port_texts(rule):
    return ["%d" % low if low == high else "%d-%d" % (low, high) for low, high in rule["ports"]]


def rule_lines(rule):
    match = "%s dport %s" % (rule["protocol"], _set(port_texts(rule)))
    by_family = [("ip", [str(n) for n in rule["sources"] if n.version == 4]),
                 ("ip6", [str(n) for n in rule["sources"] if n.version == 6])]
    sources = [" %s saddr %s" % (family, _set(nets)) for family, nets in by_family if nets] or [""]
    interfaces = ['iifname "%s" ' % interface for interface in rule["interfaces"]] or [""]
    return ["%s%s%s accept comment \"%s\"" % (interface, match, source, rule["name"])
            for interface in interfaces for source in sources]


def describe(rule):
    return "%s %s" % (rule["protocol"], ", ".join(port_texts(rule)))


def render(table, rules):
    """The nft script that replaces the table in one transaction."""
    body = ["ct state established,related accept", "ct state invalid drop", 'iifname "lo" accept',
            "meta l4proto { icmp, ipv6-icmp } accept",
            # DHCPv6 answers come from the server's link-local address, which conntrack does not
            # match with the multicast request
            "ip6 saddr fe80::/10 udp dport 546 accept"]
    for rule in rules:
        body.extend(rule_lines(rule))
    return "".join([
        "table inet %s\n" % table,
        "delete table inet %s\n" % table,
        "table inet %s {\n" % table,
        "\tchain input {\n",
        "\t\ttype filter hook input priority filter; policy drop;\n",
        "".join("\t\t%s\n" % line for line in body),
        "\t}\n",
        "}\n",
    ])


def lets_in(rules, address, port):
    """Whether a TCP connection from address to port passes the table."""
    peer = ipaddress.ip_address(address)
    if getattr(peer, "ipv4_mapped", None):
        peer = peer.ipv4_mapped
    if peer.is_loopback:
        return True
    return any(rule["protocol"] == "tcp" and not rule["interfaces"]
               and any(low <= port <= high for low, high in rule["ports"])
               and (not rule["sources"] or any(peer.version == n.version and peer in n for n in rule["sources"]))
               for rule in rules)


def guard(rules, connection):
    """Refuse a table that drops the connection Ansible came in on."""
    if connection and not lets_in(rules, connection["address"], connection["port"]):
        raise HostFirewallError(
            "allow: no rule lets in tcp port %d from %s, the address Ansible is connected from; "
            "this table would lock Ansible (and whoever manages the host from there) out. Add the "
            "address or its network to the sources of a rule for port %d (or give connected_from "
            "when Ansible comes through another address); nothing was loaded"
            % (connection["port"], connection["address"], connection["port"]))


def _proc_address(text):
    """An address:port of /proc/net/tcp or tcp6 (hex, each 32-bit word in host order)."""
    host, port = text.split(":")
    raw = b"".join(struct.pack("=I", int(host[i:i + 8], 16)) for i in range(0, len(host), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def established(proc):
    """{socket inode: (remote address, local port)} of the established TCP connections."""
    found = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", name)) as handle:
                lines = handle.read().splitlines()[1:]
        except (IOError, OSError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == ESTABLISHED:
                local, remote = _proc_address(fields[1]), _proc_address(fields[2])
                found[fields[9]] = (remote[0], local[1])
    return found


def ssh_connection(proc="/proc", pid=None):
    """The peer and local port of the SSH session this process runs under, or None.

    The session's sshd is an ancestor (through sudo, which drops SSH_CONNECTION); its socket
    is found among its descriptors and looked up in the kernel's TCP table.
    """
    connections = established(proc)
    pid = pid or os.getpid()
    seen = set()
    while pid and pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(os.path.join(proc, str(pid), "stat")) as handle:
                stat = handle.read()
        except (IOError, OSError):
            return None
        command = stat[stat.index("(") + 1:stat.rindex(")")]
        if command.startswith("sshd"):
            directory = os.path.join(proc, str(pid), "fd")
            try:
                links = [os.readlink(os.path.join(directory, fd)) for fd in os.listdir(directory)]
            except (IOError, OSError):
                links = []
            for link in links:
                match = re.match(r"^socket:\[([0-9]+)\]$", link)
                if match and match.group(1) in connections:
                    address, port = connections[match.group(1)]
                    return {"address": address, "port": port}
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return None


def from_environment(value):
    """SSH_CONNECTION ("client port server port") as a connection, or None."""
    fields = (value or "").split()
    if len(fields) == 4 and fields[3].isdigit():
        return {"address": fields[0], "port": int(fields[3])}
    return None


def given_connection(value, port):
    try:
        return {"address": str(ipaddress.ip_address(value.strip())), "port": port}
    except ValueError:
        raise HostFirewallError("connected_from: %r is not an IP address" % (value,))


def connection(given, ssh_connection_variable, proc="/proc"):
    """The connection the guard checks: the SSH session's (or the given address on its port)."""
    found = ssh_connection(proc) or from_environment(ssh_connection_variable)
    if given:
        return given_connection(given, found["port"] if found else 22)
    return found


UNIT = """# Managed by kvmsec.hardening (host_firewall): loads the nftables table {table} at boot
[Unit]
Description=kvmsec host firewall (nftables table inet {table})
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={nft} -f {path}

[Install]
WantedBy=sysinit.target
"""


def unit_text(table, nft, path):
    return UNIT.format(table=table, nft=nft, path=path)


def check_path(path):
    if not path or not os.path.isabs(path) or path.endswith("/") or any(c.isspace() for c in path):
        raise HostFirewallError("path: %r; give an absolute file path without spaces, such as "
                                "/etc/kvmsec/firewall.nft" % (path,))
    return path


def loaded_table(run, nft, table):
    """The host's table as nft prints it, or None when there is none."""
    rc, stdout, stderr = run([nft, "-s", "list", "table", "inet", table])
    if rc != 0 and "No such file or directory" in stderr:
        return None
    if rc != 0:
        raise HostFirewallError("nft list table inet %s failed (exit %d): %s" % (table, rc, stderr.strip()))
    return stdout


def wanted_table(run, nft, unshare, table, script):
    """The table as nft would hold it: loaded and printed in a network namespace of its own."""
    return _checked(run, [unshare, "--net", "--", "sh", "-c", '"$1" -f - && "$1" -s list table inet "$2"',
                          "sh", nft, table], "nft (checking the table in a scratch namespace)", data=script)


def _checked(run, argv, what, data=None):
    try:
        return checked(run, argv, data=data, what=what)
    except CommandError as exc:
        raise HostFirewallError(str(exc))


def decide(run, tools, table, allow, path, session, unit_dir=UNIT_DIR, relabel=None):
    """The plan that leaves the table loaded, kept in path and loaded at boot.

    tools: the paths of nft, unshare and systemctl (None where missing); session: the
    connection the guard checks (``connection()``); relabel(path): gives a written file its
    default SELinux label.
    """
    table = check_table(table)
    rules = parse_rules(allow)
    path = check_path(path)
    guard(rules, session)
    for tool, package in (("nft", "nftables"), ("unshare", "util-linux"), ("systemctl", "systemd")):
        if not tools.get(tool):
            raise HostFirewallError("%s not found: install the %s package" % (tool, package))
    nft, systemctl = tools["nft"], tools["systemctl"]
    unit_name = "%s-firewall.service" % table
    script = render(table, rules)
    before = loaded_table(run, nft, table)
    after = wanted_table(run, nft, tools["unshare"], table, script)
    files = [_files.change_to(path, script, _files.PRIVATE),
             _files.change_to(os.path.join(unit_dir, unit_name), unit_text(table, nft, path))]
    enabled = run([systemctl, "is-enabled", "--quiet", unit_name])[0] == 0
    changes = [what for what, differs in (("table", before != after), ("file", files[0] is not None),
                                          ("unit", files[1] is not None), ("enabled", not enabled))
               if differs]
    result = dict(table="inet %s" % table, path=path, changes=changes, connected_from=session)
    diff = dict(before=before or "", after=after, before_header="table inet %s (loaded)" % table,
                after_header="table inet %s (wanted)" % table)
    warnings = ["host_firewall: rule '%s' lets %s in from anywhere; give it sources to narrow it" % (
        rule["name"], describe(rule)) for rule in rules if not rule["sources"] and not rule["interfaces"]]
    written = [change for change in files if change]

    def apply():
        loaded = []

        def load_and_enable():
            for change in written:
                if relabel:
                    relabel(change.path)
            if "table" in changes:
                loaded.append(table)
                _checked(run, [nft, "-f", path], "nft -f %s" % path)
            if "unit" in changes:
                _checked(run, [systemctl, "daemon-reload"], "systemctl daemon-reload")
            if "enabled" in changes or "unit" in changes:
                _checked(run, [systemctl, "enable", "--quiet", unit_name], "systemctl enable %s" % unit_name)

        try:
            _files.write_all(written, load_and_enable)
        except (_files.NotRestored, HostFirewallError, IOError, OSError) as exc:
            message = str(exc) if isinstance(exc, (_files.NotRestored, HostFirewallError)) else \
                "cannot write %s: %s" % (getattr(exc, "filename", None) or path, exc.strerror or exc)
            if loaded:
                message += "; " + _load_back(run, nft, table, before)
            if not isinstance(exc, _files.NotRestored):
                message += "; %s and the boot unit are as they were" % path
            raise HostFirewallError(message)
        return result
    return Plan(bool(changes), result, diff, warnings, apply if changes else None)


def _load_back(run, nft, table, before):
    """Put the table the host had back (or none, as it had); says what happened."""
    script = "table inet %s\ndelete table inet %s\n%s" % (table, table, before or "")
    rc, _stdout, stderr = run([nft, "-f", "-"], data=script)
    if rc != 0:
        return "putting back the table that was loaded failed too (%s): check nft list table inet %s" % (
            stderr.strip(), table)
    return "the loaded table is as it was"
