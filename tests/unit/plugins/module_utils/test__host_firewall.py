# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host firewall's core: rules checked, the table nft really loads (in a network namespace
of the test's own, with the nft the project installs), the lock-out guard, and finding the SSH
session in the kernel's real TCP table."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import subprocess

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _host_firewall as core

LAB_ALLOW = [
    {"name": "ssh", "ports": ["22"], "sources": ["10.0.2.0/24", "2001:db8::/64", "192.0.2.2"]},
    {"name": "guest dns", "protocol": "udp", "ports": ["53", "67"], "interfaces": ["virbr*"]},
    {"name": "migration", "ports": ["49152-49215"], "sources": ["10.0.2.0/24"]},
]


def nft_loads(script, table="kvmsec"):
    """The table as nft holds it after the script, in a network namespace thrown away after."""
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", 'nft -f - && nft -s list table inet "$1"',
                           "sh", table], input=script, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_table_loads_and_nft_prints_each_rule_with_its_name():
    listed = nft_loads(core.render("kvmsec", core.parse_rules(LAB_ALLOW)))
    assert "policy drop;" in listed
    assert 'tcp dport 22 ip saddr { 10.0.2.0/24, 192.0.2.2 } accept comment "ssh"' in listed
    assert 'tcp dport 22 ip6 saddr 2001:db8::/64 accept comment "ssh"' in listed
    assert 'iifname "virbr*" udp dport { 53, 67 } accept comment "guest dns"' in listed
    assert "tcp dport 49152-49215 ip saddr 10.0.2.0/24 accept" in listed
    assert "16509" not in listed


def test_loading_the_script_again_replaces_the_table_in_one_transaction_without_doubling_it():
    script = core.render("kvmsec", core.parse_rules(LAB_ALLOW))
    once = nft_loads(script)
    twice = nft_loads(script + script)
    assert once == twice
    assert once.count('comment "ssh"') == 2


def test_the_same_rules_written_differently_load_the_same_table():
    spelled = [dict(LAB_ALLOW[0], sources=["192.0.2.2/32", "10.0.2.7/24", "2001:db8::1/64"])] + LAB_ALLOW[1:]
    assert nft_loads(core.render("kvmsec", core.parse_rules(spelled))) == \
        nft_loads(core.render("kvmsec", core.parse_rules(LAB_ALLOW)))


@pytest.mark.parametrize("allow, message", [
    ([{"name": "ssh", "ports": ["22"], "sources": ["10.0.2.300"]}], "allow[0] (ssh).sources: '10.0.2.300' is not an address"),
    ([{"name": "ssh", "ports": ["70000"]}], "allow[0] (ssh).ports: '70000' is not a port"),
    ([{"name": "ssh", "ports": ["30-20"]}], "allow[0] (ssh).ports: '30-20'"),
    ([{"name": "ssh", "ports": []}], "allow[0] (ssh).ports: empty"),
    ([{"name": "ssh", "protocol": "sctp", "ports": ["22"]}], "allow[0] (ssh).protocol: 'sctp'; valid: tcp, udp"),
    ([{"name": 'x" accept; drop', "ports": ["22"]}], "allow[0].name:"),
    ([{"name": "dns", "ports": ["53"], "interfaces": ["virbr0; drop"]}], "allow[0] (dns).interfaces:"),
    ([{"name": "ssh", "ports": ["22"], "source": ["10.0.0.0/8"]}], "allow[0]: unknown key source"),
])
def test_bad_rules_are_refused_naming_the_rule_and_what_is_valid(allow, message):
    with pytest.raises(core.HostFirewallError, match=None) as caught:
        core.parse_rules(allow)
    assert message in str(caught.value)


def test_a_bad_table_name_is_refused():
    with pytest.raises(core.HostFirewallError, match="table: 'kvm sec'"):
        core.check_table("kvm sec")


@pytest.mark.parametrize("address, port, allowed", [
    ("10.0.2.2", 22, True),
    ("192.0.2.2", 22, True),
    ("192.0.2.3", 22, False),
    ("::ffff:10.0.2.2", 22, True),
    ("2001:db8::5", 22, True),
    ("2001:db9::5", 22, False),
    ("10.0.2.2", 2222, False),
    ("127.0.0.1", 2222, True),
    ("10.0.2.9", 49160, True),
])
def test_the_guard_knows_which_connections_the_table_lets_in(address, port, allowed):
    assert core.lets_in(core.parse_rules(LAB_ALLOW), address, port) is allowed


def test_a_rule_bound_to_an_interface_does_not_count_for_the_guard():
    rules = core.parse_rules([{"name": "ssh", "ports": ["22"], "interfaces": ["eth0"]}])
    with pytest.raises(core.HostFirewallError, match="no rule lets in tcp port 22 from 10.0.2.2.*nothing was loaded"):
        core.guard(rules, {"address": "10.0.2.2", "port": 22})


def test_without_a_connection_there_is_nothing_to_guard():
    core.guard(core.parse_rules([{"name": "ssh", "ports": ["22"], "sources": ["192.0.2.0/24"]}]), None)


def test_ssh_connection_and_connected_from_are_read():
    assert core.from_environment("10.0.2.2 50522 10.0.2.15 22") == {"address": "10.0.2.2", "port": 22}
    assert core.from_environment("") is None
    assert core.given_connection(" 192.0.2.7 ", 2222) == {"address": "192.0.2.7", "port": 2222}
    with pytest.raises(core.HostFirewallError, match="connected_from: 'bastion' is not an IP address"):
        core.given_connection("bastion", 22)


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_established_connections_are_read_from_the_kernels_tcp_table(family, address):
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((address, 0))
    server.listen(1)
    client = socket.create_connection((address, server.getsockname()[1]))
    accepted, _peer = server.accept()
    try:
        inode = os.readlink("/proc/self/fd/%d" % accepted.fileno())[len("socket:["):-1]
        assert core.established("/proc")[inode] == (address, server.getsockname()[1])
    finally:
        for sock in (accepted, client, server):
            sock.close()


def test_the_ssh_session_is_found_through_the_sshd_ancestor(tmp_path):
    # No sshd runs on the development machine, so the process tree is built by hand: python under
    # sudo under the session's sshd, which holds the socket; /proc/net/tcp is a real kernel line
    # (10.0.2.2:50522 -> 10.0.2.15:22, established)
    tcp = tmp_path / "net" / "tcp"
    tcp.parent.mkdir()
    tcp.write_text("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
                   "   0: 0F02000A:0016 0202000A:C55A 01 00000000:00000000 02:000A7B1A 00000000     0        0 4711 "
                   "4 0000000000000000 20 4 29 10 -1\n")
    for pid, command, ppid in ((300, "python3", 200), (200, "sudo", 100), (100, "sshd", 1)):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        (tmp_path / str(pid) / "stat").write_text("%d (%s) S %d 1 1 0 -1\n" % (pid, command, ppid))
    os.symlink("socket:[4711]", str(tmp_path / "100" / "fd" / "3"))
    os.symlink("/dev/null", str(tmp_path / "300" / "fd" / "0"))
    assert core.ssh_connection(str(tmp_path), 300) == {"address": "10.0.2.2", "port": 22}
    os.unlink(str(tmp_path / "100" / "fd" / "3"))
    assert core.ssh_connection(str(tmp_path), 300) is None


def test_the_boot_unit_loads_the_kept_script():
    unit = core.unit_text("kvmsec", "/usr/sbin/nft", "/etc/kvmsec/firewall.nft")
    assert "ExecStart=/usr/sbin/nft -f /etc/kvmsec/firewall.nft\n" in unit
    assert "Before=network-pre.target" in unit
    assert "WantedBy=sysinit.target" in unit


def test_a_rule_is_described_by_protocol_and_ports():
    rules = core.parse_rules(LAB_ALLOW)
    assert [core.describe(rule) for rule in rules] == ["tcp 22", "udp 53, 67", "tcp 49152-49215"]
