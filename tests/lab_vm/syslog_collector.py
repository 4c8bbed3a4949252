"""A central syslog collector for the lab: syslog over TLS (RFC 5425, octet-counted frames on
TCP), with client certificates required, on this machine's loopback. A lab VM reaches it at
10.0.2.2 (QEMU's user network maps that address to the host's loopback), as a fleet's hosts
reach their collector.

Every message received is appended to a file, one JSON string per line, as it arrives.

``make_pki(directory)`` makes the collector's CA, its certificate (for COLLECTOR_NAME) and a
host's client certificate, in PEM files of PKI_FILES.

As a library (tests/integration/on_lab_vm): ``with Collector(...) as collector`` runs it in a
thread; ``stop()`` closes the listener and every connection (the collector going down) and
``start()`` opens them again. As a script (Molecule): ``pki DIR`` makes the PKI once, and
``serve DIR`` runs the collector until ``--seconds`` have passed or it is killed (its pid in
DIR/collector.pid), so that nothing outlives the scenario.
"""

import argparse
import datetime
import json
import os
import select
import socket
import ssl
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

COLLECTOR_NAME = "collector.kvmsec.test"
# name: what the file holds
PKI_FILES = dict(ca="ca.pem", collector_cert="collector.pem", collector_key="collector.key",
                 host_cert="host.pem", host_key="host.key")


def _pem(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _certificate(name, usage=None, issuer=None, dns=None):
    """A certificate for name and its key; self-signed (a CA) without issuer (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def make_pki(directory, host_name="kvmlab"):
    """The PEM files of PKI_FILES in directory (keys readable by their owner alone); their paths."""
    ca = _certificate("kvmsec lab collector CA")
    collector = _certificate(COLLECTOR_NAME, ExtendedKeyUsageOID.SERVER_AUTH, ca, dns=COLLECTOR_NAME)
    host = _certificate(host_name, ExtendedKeyUsageOID.CLIENT_AUTH, ca)
    contents = dict(ca=ca[0], collector_cert=collector[0], collector_key=collector[1], host_cert=host[0],
                    host_key=host[1])
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {}
    for name, obj in contents.items():
        paths[name] = os.path.join(directory, PKI_FILES[name])
        with open(os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(_pem(obj))
    return paths


def frames(buffer):
    """The complete octet-counted frames (``LEN SP MSG``) at the start of buffer (a bytearray),
    removed from it; a partial frame stays for the next read."""
    messages = []
    while True:
        space = buffer.find(b" ")
        if space < 0:
            return messages
        length = int(buffer[:space])
        end = space + 1 + length
        if len(buffer) < end:
            return messages
        messages.append(bytes(buffer[space + 1:end]).decode("utf-8", "replace"))
        del buffer[:end]


class Collector(object):
    def __init__(self, out, cert, key, ca, port=6514, address="127.0.0.1"):
        self.out, self.port, self.address = out, port, address
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
        self.context.load_cert_chain(cert, key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        # the lab's certificates carry no key identifiers, which Python 3.13's default refuses
        self.context.verify_flags &= ~ssl.VERIFY_X509_STRICT
        self.lock = threading.Lock()
        self.listener = self.thread = None
        self.connections = []
        self.peers = []

    def start(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.address, self.port))
        self.listener.listen(8)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        if self.thread:
            self.thread.join(10)
        for conn in [self.listener] + self.connections:
            try:
                conn.close()
            except OSError:
                pass
        self.listener, self.thread, self.connections = None, None, []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def messages(self):
        with self.lock, open(self.out, encoding="utf-8") as stream:
            return [json.loads(line) for line in stream if line.strip()]

    def wait_for(self, predicate, seconds):
        """The messages, as soon as predicate(messages) holds, or after seconds."""
        deadline = time.monotonic() + seconds
        while True:
            messages = self.messages()
            if predicate(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)

    def _serve(self):
        buffers = {}
        open(self.out, "a").close()
        while self.running:
            ready = select.select([self.listener] + self.connections, [], [], 0.2)[0]
            for sock in ready:
                if sock is self.listener:
                    self._accept(buffers)
                    continue
                try:
                    data = sock.recv(65536)
                    # TLS decrypts a record at a time: what is left of the stream waits in the
                    # SSL object, where select() cannot see it
                    while data and sock.pending():
                        data += sock.recv(sock.pending())
                except (ssl.SSLError, OSError):
                    data = b""
                if data:
                    buffers[sock].extend(data)
                    try:
                        received = frames(buffers[sock])
                    except ValueError:
                        # not octet-counted syslog: a real collector drops such a client too
                        data = b""
                if not data:
                    self.connections.remove(sock)
                    buffers.pop(sock, None)
                    sock.close()
                    continue
                if received:
                    with self.lock, open(self.out, "a", encoding="utf-8") as stream:
                        stream.writelines(json.dumps(message) + "\n" for message in received)

    def _accept(self, buffers):
        raw, dummy = self.listener.accept()
        raw.settimeout(10)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            # a client without a certificate of the CA is refused, as a real collector refuses it
            raw.close()
            return
        conn.settimeout(None)
        self.peers.append(dict(x[0] for x in conn.getpeercert()["subject"]))
        self.connections.append(conn)
        buffers[conn] = bytearray()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pki = commands.add_parser("pki", help="make the PKI in DIR, unless it is there")
    pki.add_argument("dir")
    serve = commands.add_parser("serve", help="run the collector with the PKI of DIR")
    serve.add_argument("dir")
    serve.add_argument("--out", required=True, help="the file the messages are appended to")
    serve.add_argument("--port", type=int, default=6514)
    serve.add_argument("--seconds", type=float, required=True, help="run this long, then exit")
    args = parser.parse_args()
    files = dict((name, os.path.join(args.dir, file)) for name, file in PKI_FILES.items())
    if args.command == "pki":
        if not all(os.path.exists(path) for path in files.values()):
            make_pki(args.dir)
        return
    with open(os.path.join(args.dir, "collector.pid"), "w") as pidfile:
        pidfile.write("%d\n" % os.getpid())
    with Collector(args.out, files["collector_cert"], files["collector_key"], files["ca"], args.port):
        time.sleep(args.seconds)


if __name__ == "__main__":
    main()
