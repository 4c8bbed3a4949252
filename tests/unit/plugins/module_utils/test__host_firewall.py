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

from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import Module, outcome

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


class Host(object):
    """The host as decide and apply see it: nft runs for real in a network namespace of the
    test's own (kept between calls, as a host keeps its tables), files under tmp_path; systemd
    cannot be driven from a unit test, so systemctl is recorded and answers as told."""

    def __init__(self, tmp_path, namespace):
        self.namespace = namespace
        self.path = str(tmp_path / "etc" / "kvmsec" / "firewall.nft")
        self.unit_dir = str(tmp_path / "systemd")
        os.mkdir(self.unit_dir)
        self.enabled = False
        self.failing = None       # a systemctl verb that fails
        self.systemctl = []
        self.relabelled = []

    def run(self, argv, data=None):
        argv = list(argv)
        if argv[0] == "systemctl":
            self.systemctl.append(argv[1])
            if argv[1] == self.failing:
                return 1, "", "Failed to %s: Access denied" % argv[1]
            if argv[1] == "is-enabled":
                return (0 if self.enabled else 1), "", ""
            self.enabled = self.enabled or argv[1] == "enable"
            return 0, "", ""
        if argv[0] == "nft":
            argv = ["ip", "netns", "exec", self.namespace] + argv
        done = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout, done.stderr

    def nft(self, *args, **kwargs):
        return self.run(["nft"] + list(args), **kwargs)

    def decide(self, allow=None, table="kvmsec", path=None, session=None, tools=None):
        return core.decide(self.run, tools or dict(nft="nft", unshare="unshare", systemctl="systemctl"), table,
                           LAB_ALLOW if allow is None else allow, path or self.path, session,
                           unit_dir=self.unit_dir, relabel=self.relabelled.append)

    def unit(self):
        return os.path.join(self.unit_dir, "kvmsec-firewall.service")


@pytest.fixture
def host(tmp_path):
    namespace = "kvmsec-test-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        yield Host(tmp_path, namespace)
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=True)


def applied(plan):
    return plan.apply() if plan.apply else plan.result


def test_a_pristine_host_gets_table_file_and_unit_and_check_mode_touches_nothing(host):
    plan = host.decide()
    assert plan.changed and plan.result["changes"] == ["table", "file", "unit", "enabled"]
    assert plan.diff["before"] == "" and 'accept comment "ssh"' in plan.diff["after"]
    assert host.nft("list", "table", "inet", "kvmsec")[0] != 0
    assert not os.path.exists(host.path) and not os.path.exists(host.unit())
    applied(plan)
    assert host.nft("-s", "list", "table", "inet", "kvmsec")[1] == plan.diff["after"]
    assert os.stat(host.path).st_mode & 0o777 == 0o600
    assert os.stat(host.unit()).st_mode & 0o777 == 0o644
    assert "ExecStart=nft -f %s\n" % host.path in open(host.unit()).read()
    assert host.systemctl == ["is-enabled", "daemon-reload", "enable"]
    assert host.relabelled == [host.path, host.unit()]
    again = host.decide()
    assert not again.changed and again.apply is None and again.result["changes"] == []


def test_a_rule_added_by_hand_is_a_change_of_the_table_only(host):
    applied(host.decide())
    assert host.nft("add", "rule", "inet", "kvmsec", "input", "tcp", "dport", "16509", "accept")[0] == 0
    plan = host.decide()
    assert plan.result["changes"] == ["table"]
    assert "16509" in plan.diff["before"] and "16509" not in plan.diff["after"]
    applied(plan)
    assert "16509" not in host.nft("list", "table", "inet", "kvmsec")[1]


def test_a_failure_after_the_load_puts_table_file_and_unit_back(host):
    applied(host.decide(allow=LAB_ALLOW[:1]))
    before = host.nft("-s", "list", "table", "inet", "kvmsec")[1]
    script, unit = open(host.path).read(), open(host.unit()).read()
    host.enabled = False
    host.failing = "enable"
    plan = host.decide()
    assert plan.result["changes"] == ["table", "file", "enabled"]
    with pytest.raises(core.HostFirewallError, match="systemctl enable kvmsec-firewall.service failed .exit 1.: "
                       "Failed to enable: Access denied; the loaded table is as it was; .* are as they were"):
        plan.apply()
    assert host.nft("-s", "list", "table", "inet", "kvmsec")[1] == before
    assert (open(host.path).read(), open(host.unit()).read()) == (script, unit)


def test_on_a_pristine_host_a_failure_leaves_no_table_and_no_file(host):
    host.failing = "daemon-reload"
    with pytest.raises(core.HostFirewallError, match="systemctl daemon-reload failed"):
        host.decide().apply()
    assert host.nft("list", "table", "inet", "kvmsec")[0] != 0
    assert not os.path.exists(host.path) and not os.path.exists(os.path.dirname(host.path))
    assert not os.path.exists(host.unit())


def test_a_file_that_cannot_be_written_fails_cleanly_with_nothing_loaded(host, tmp_path):
    blocker = tmp_path / "etc"
    blocker.write_text("a file where the directory would go\n")
    module = Module()
    kind, result = outcome(module, host.decide, (core.HostFirewallError,), "host_firewall")
    assert kind == "fail"
    assert result["msg"].startswith("host_firewall: cannot write ")
    assert "are as they were" in result["msg"]
    assert host.nft("list", "table", "inet", "kvmsec")[0] != 0
    assert host.systemctl == ["is-enabled"]


@pytest.mark.parametrize("path", ["firewall.nft", "etc/kvmsec/firewall.nft", "/etc/kvmsec/", "/etc/kv msec.nft",
                                  "/etc/kvmsec/fire\nwall.nft"])
def test_a_path_that_is_not_an_absolute_file_path_is_refused_before_anything_runs(host, path):
    with pytest.raises(core.HostFirewallError, match="path: .*; give an absolute file path"):
        host.decide(path=path)
    assert host.systemctl == []


def test_without_nft_nothing_is_decided(host):
    with pytest.raises(core.HostFirewallError, match="nft not found: install the nftables package"):
        host.decide(tools=dict(nft=None, unshare="unshare", systemctl="systemctl"))


def test_the_guard_refuses_before_the_host_is_read(host):
    with pytest.raises(core.HostFirewallError, match="no rule lets in tcp port 22 from 198.51.100.7"):
        host.decide(session={"address": "198.51.100.7", "port": 22})
    assert host.systemctl == []
