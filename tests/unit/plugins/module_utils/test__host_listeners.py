"""The host_listeners core: the kernel's tables as this machine's kernel writes them (sockets this
test opens are found in the real /proc, with this process as their holder), and the comparison
with the rules over listeners built here."""

import os
import socket

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _host_listeners as core

# /proc/net/tcp and tcp6 lines as Linux writes them: sshd on 0.0.0.0:22 and [::]:22, a client
# connection (not listening), 127.0.0.1:631, and a dual-stack socket's IPv4-mapped address
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C5A2 01 00000000:00000000 02:0009A2F1 00000000     0        0 3333 4 0 20 10 -1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000F02000A:4012 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0 100 0 0 10 0
"""
# dnsmasq on 192.168.122.1:53 and 0.0.0.0:67, and a connected UDP client socket
UDP = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 017AA8C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6666 2 0 0
  101: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7777 2 0 0
  102: 0F02000A:D431 0302000A:0035 01 00000000:00000000 00:00000000 00000000     0        0 8888 2 0 0
"""


def listener(protocol, address, port, *processes):
    return core.Listener(protocol, address, port, 0, processes)


@pytest.mark.parametrize("text, family, byteorder, address", [
    ("0100007F", 4, "little", "127.0.0.1"),
    ("7F000001", 4, "big", "127.0.0.1"),
    ("017AA8C0", 4, "little", "192.168.122.1"),
    ("00000000000000000000000001000000", 6, "little", "::1"),
    ("0000000000000000FFFF00000F02000A", 6, "little", "10.0.2.15"),
    ("B80D0120000000000000000001000000", 6, "little", "2001:db8::1"),
])
def test_addresses_decode_in_the_hosts_byte_order(text, family, byteorder, address):
    assert core.decode_address(text, family, byteorder) == address


def test_tables_give_listening_tcp_and_unconnected_udp_only():
    assert core.parse_table(TCP, "tcp", 4) == [("0.0.0.0", 22, 1111), ("127.0.0.1", 631, 2222)]
    assert core.parse_table(TCP6, "tcp", 6) == [("::", 22, 4444), ("10.0.2.15", 16402, 5555)]
    assert core.parse_table(UDP, "udp", 4) == [("192.168.122.1", 53, 6666), ("0.0.0.0", 67, 7777)]


def test_sockets_this_process_opens_are_read_from_the_real_proc():
    comm = open("/proc/self/comm").read().strip()
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        udp.bind(("0.0.0.0", 0))
        found = {(item.protocol, item.endpoint): item.processes for item in core.read_listeners()}
        assert found[("tcp", "127.0.0.1:%d" % tcp.getsockname()[1])] == [comm]
        assert found[("udp", "0.0.0.0:%d" % udp.getsockname()[1])] == [comm]
        assert core.socket_holders()[os.fstat(tcp.fileno()).st_ino] == [comm]


RULES = [
    {"name": "ssh", "protocol": "tcp", "processes": ["sshd"]},
    {"name": "libvirt tls", "protocol": "tcp", "ports": ["16514"], "processes": ["systemd", "libvirtd"]},
    {"name": "guest dhcp and dns", "processes": ["dnsmasq"]},
    {"name": "migration", "protocol": "tcp", "ports": ["49152-49215"], "addresses": ["10.0.2.0/24"]},
]


def test_expected_listeners_are_named_by_their_rule_and_the_rest_are_problems():
    listeners = [
        listener("tcp", "0.0.0.0", 22, "sshd"),
        listener("tcp", "::", 22, "sshd"),
        listener("tcp", "10.0.2.15", 16514, "libvirtd", "systemd"),
        listener("udp", "192.168.122.1", 53, "dnsmasq"),
        listener("tcp", "10.0.2.15", 49160, "qemu-system-x86"),
        listener("tcp", "127.0.0.1", 5900, "qemu-system-x86"),
        listener("tcp", "::1", 631, "cupsd"),
        listener("tcp", "0.0.0.0", 8080, "python3"),
        listener("udp", "0.0.0.0", 16514, "libvirtd"),
        listener("tcp", "10.0.3.1", 49160, "qemu-system-x86"),
        listener("tcp", "0.0.0.0", 16514, "libvirtd", "nc"),
        listener("tcp", "0.0.0.0", 2222),
    ]
    plan = core.decide(listeners, RULES)
    assert not plan.changed and plan.apply is None
    assert [entry["expected"] for entry in plan.result["listeners"]] == [
        "ssh", "ssh", "libvirt tls", "guest dhcp and dns", "migration", "loopback", "loopback",
        None, None, None, None, None]
    assert plan.result["problems"] == [
        "tcp 0.0.0.0:8080 (python3): not expected",
        "udp 0.0.0.0:16514 (libvirtd): not expected",
        "tcp 10.0.3.1:49160 (qemu-system-x86): not expected",
        "tcp 0.0.0.0:16514 (libvirtd, nc): not expected",
        "tcp 0.0.0.0:2222 (no process): not expected",
    ]
    assert plan.result["listeners"][2] == {"protocol": "tcp", "address": "10.0.2.15", "port": 16514,
                                           "processes": ["libvirtd", "systemd"], "expected": "libvirt tls"}


def test_loopback_listeners_are_problems_when_not_allowed():
    plan = core.decide([listener("tcp", "127.0.0.1", 5900, "qemu-system-x86"),
                        listener("tcp", "::1", 5901, "qemu-system-x86")], [], allow_loopback=False)
    assert plan.result["problems"] == ["tcp 127.0.0.1:5900 (qemu-system-x86): not expected",
                                       "tcp [::1]:5901 (qemu-system-x86): not expected"]


@pytest.mark.parametrize("allow, message", [
    (["ssh"], r"allow\[0\]: a rule is a dictionary"),
    ([{"name": "x", "port": ["22"]}], r"allow\[0\]: unknown key port"),
    ([{"ports": ["22"]}], r"allow\[0\].name: give the rule a name"),
    ([{"name": "x", "protocol": "sctp", "ports": ["22"]}], r"allow\[0\].protocol: 'sctp' is not tcp or udp"),
    ([{"name": "x", "ports": "22"}], r"allow\[0\].ports: give a list"),
    ([{"name": "x", "ports": ["0"]}], r"allow\[0\].ports: '0' is not a port"),
    ([{"name": "x", "ports": ["70000"]}], r"allow\[0\].ports: '70000' is not a port"),
    ([{"name": "x", "ports": ["6000-5900"]}], r"allow\[0\].ports: '6000-5900' is not a port"),
    ([{"name": "x", "ports": ["ssh"]}], r"allow\[0\].ports: 'ssh' is not a port"),
    ([{"name": "ok", "ports": ["22"]}, {"name": "x", "addresses": ["10.0.0.300"]}],
     r"allow\[1\].addresses: '10.0.0.300' is not an address or a network"),
    ([{"name": "x", "protocol": "tcp"}], r"allow\[0\]: give ports, addresses or processes"),
])
def test_bad_rules_are_refused_naming_the_rule_and_the_key(allow, message):
    with pytest.raises(core.ListenersError, match=message):
        core.decide([], allow)
