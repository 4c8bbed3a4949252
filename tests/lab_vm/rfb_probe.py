"""A VNC (RFB 3.8) client just far enough to tell how a guest's console answers.

    python3 rfb_probe.py PORT plain
    python3 rfb_probe.py PORT tls CAFILE [CERTFILE KEYFILE]

plain asks for no security at all and prints the security types the server offered and whether
it let the client in. tls takes VeNCrypt's X509None (TLS, the server's certificate checked against
CAFILE, the client's certificate if given, no password), and prints the guest's name from the
server's init message once in, or why it was refused. Used by the lab's verify
(molecule/shared/tasks/verify-remote-consoles.yml) from the development machine.
"""

import socket
import ssl
import struct
import sys

VENCRYPT = 19
NO_SECURITY = 1
X509_NONE = 260


def receive(channel, size):
    data = b""
    while len(data) < size:
        chunk = channel.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection after %d of %d bytes" % (len(data), size))
        data += chunk
    return data


def security_types(channel):
    version = receive(channel, 12)
    if not version.startswith(b"RFB "):
        raise ConnectionError("not a VNC server: %r" % version)
    channel.sendall(b"RFB 003.008\n")
    count = receive(channel, 1)[0]
    if count == 0:
        length = struct.unpack(">I", receive(channel, 4))[0]
        raise ConnectionError("no security type: %s" % receive(channel, length).decode(errors="replace"))
    return list(receive(channel, count))


def security_result(channel):
    if struct.unpack(">I", receive(channel, 4))[0] == 0:
        return None
    length = struct.unpack(">I", receive(channel, 4))[0]
    return receive(channel, length).decode(errors="replace")


def server_name(channel):
    channel.sendall(b"\x01")  # ClientInit: share the console
    header = receive(channel, 24)  # width, height, pixel format, name length
    return receive(channel, struct.unpack(">I", header[20:24])[0]).decode(errors="replace")


def plain(channel):
    offered = security_types(channel)
    channel.sendall(bytes([NO_SECURITY]))
    try:
        refusal = security_result(channel)
    except ConnectionError as exc:
        refusal = str(exc)
    return "offered=%s plain=%s" % (",".join(map(str, offered)), "refused" if refusal else "accepted")


def tls(channel, cafile, certificate):
    offered = security_types(channel)
    if VENCRYPT not in offered:
        return "refused: no VeNCrypt among %s" % offered
    channel.sendall(bytes([VENCRYPT]))
    receive(channel, 2)  # the server's VeNCrypt version
    channel.sendall(b"\x00\x02")
    if receive(channel, 1)[0] != 0:
        return "refused: VeNCrypt 0.2"
    count = receive(channel, 1)[0]
    subtypes = struct.unpack(">%dI" % count, receive(channel, 4 * count))
    if X509_NONE not in subtypes:
        return "refused: no X509None among %s" % (subtypes,)
    channel.sendall(struct.pack(">I", X509_NONE))
    if receive(channel, 1)[0] != 1:
        return "refused: X509None"
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False  # the lab's console is reached through a forwarded port
    if certificate:
        context.load_cert_chain(*certificate)
    try:
        with context.wrap_socket(channel, server_hostname="localhost") as secured:
            refusal = security_result(secured)
            if refusal:
                return "refused: %s" % refusal
            return "name=%s version=%s" % (server_name(secured), secured.version())
    except (ssl.SSLError, ConnectionError) as exc:
        return "refused: %s" % exc


def main(argv):
    port, mode = int(argv[1]), argv[2]
    channel = socket.create_connection(("localhost", port), timeout=60)
    try:
        print(plain(channel) if mode == "plain" else tls(channel, argv[3], tuple(argv[4:6])))
    except socket.timeout:
        print("kept open")
    finally:
        channel.close()


if __name__ == "__main__":
    main(sys.argv)
