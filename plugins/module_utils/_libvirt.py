# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one way to libvirt. Private to the collection: not a public API.

Every module that talks to libvirt opens a ``Connection`` here and reads guests as ``Domain``
records and their disks as ``Disk`` records, so a guest means the same thing to every module:
the same lookup by name or UUID, the same disk sources (files, block devices and storage pool
volumes, with their backing chains), the same XML round trip.

Nothing here imports libvirt: the module passes the libvirt-python module object it imported
(the unit tests pass one fake), so the file runs on any Python and is tested without a daemon.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import re
import xml.etree.ElementTree as ET

DEFAULT_URI = "qemu:///system"
URI_SPEC = dict(uri=dict(type="str", default=DEFAULT_URI))
# libvirt reads a UUID with or without its dashes
UUID_RE = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)

# virDomainXMLFlags; libvirt-python has the same values, which never change
XML_SECURE = 1
XML_INACTIVE = 2


class LibvirtError(Exception):
    """Something about libvirt the operator can act on; the message says what to do."""


def connect_message(uri, error):
    return ("cannot connect to libvirt at %s (%s): start the libvirt daemon or its socket "
            "(libvirtd, or virtqemud with the modular daemons), or set uri to the connection "
            "this host uses" % (uri, error))


class Connection(object):
    """An open libvirt connection and the few calls the collection's modules make on it."""

    def __init__(self, libvirt, uri=DEFAULT_URI):
        self.libvirt = libvirt
        self.error = libvirt.libvirtError
        # libvirt prints every error on stderr by default; ours are raised and reported instead
        libvirt.registerErrorHandler(lambda _context, _error: None, None)
        try:
            self.conn = libvirt.open(uri)
        except self.error as exc:
            raise LibvirtError(connect_message(uri, exc))
        self.uri = uri
        self._volumes = {}

    def domains(self, record=None):
        """Every domain, defined or running, sorted by name, as ``Domain`` or the module's own
        subclass of it."""
        record = record or Domain
        return sorted((record(handle, self.volume_path) for handle in self.conn.listAllDomains(0)),
                      key=lambda domain: domain.name)

    def domain(self, name_or_uuid, option="guests[].name"):
        """The domain with this name or UUID; the error lists the guests that do exist."""
        try:
            if UUID_RE.match(name_or_uuid):
                handle = self.conn.lookupByUUIDString(name_or_uuid)
            else:
                handle = self.conn.lookupByName(name_or_uuid)
        except self.error:
            raise LibvirtError(unknown_domain(name_or_uuid, self.domains(), option))
        return Domain(handle, self.volume_path)

    def volume_path(self, pool, volume):
        """The host path of a storage pool volume, or None when the pool or volume is missing."""
        key = (pool, volume)
        if key not in self._volumes:
            try:
                self._volumes[key] = self.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
            except self.error:
                self._volumes[key] = None
        return self._volumes[key]

    def pool_volumes(self, pool, refresh=False):
        """[(name, path, format)] of the pool's volumes in name order (format as the volume's
        XML gives it, None when it gives none); refresh first reads the pool's directory again."""
        try:
            handle = self.conn.storagePoolLookupByName(pool)
        except self.error:
            raise LibvirtError("pools: no libvirt storage pool %s on this host" % pool)
        if not handle.isActive():
            raise LibvirtError("pools: the storage pool %s is not active: start it (virsh pool-start %s)" % (pool, pool))
        if refresh:
            handle.refresh(0)
        volumes = []
        for volume in handle.listAllVolumes(0):
            target = parse(volume.XMLDesc(0), "volume XML of %s" % volume.name()).find("target/format")
            volumes.append((volume.name(), volume.path(), None if target is None else target.get("type")))
        return sorted(volumes)

    def capabilities(self):
        return self.conn.getCapabilities()

    def define(self, xml_text):
        """Make xml_text the domain's persistent definition."""
        self.conn.defineXML(xml_text)

    def nwfilters(self):
        """The names of the network traffic filters libvirt has."""
        return sorted(nwfilter.name() for nwfilter in self.conn.listAllNWFilters(0))

    def secret(self, uuid):
        """The secret with this UUID, or None when libvirt has none."""
        try:
            return self.conn.secretLookupByUUIDString(uuid)
        except self.error as exc:
            if exc.get_error_code() == self.libvirt.VIR_ERR_NO_SECRET:
                return None
            raise

    def define_secret(self, xml_text, value):
        self.conn.secretDefineXML(xml_text, 0).setValue(value, 0)


def _same_uuid(first, second):
    return first.replace("-", "").lower() == second.replace("-", "").lower()


def unknown_domain(name_or_uuid, domains, option):
    return ("%s: no libvirt domain %s on this host (give a name or UUID); its domains: %s"
            % (option, name_or_uuid, ", ".join(domain.name for domain in domains) or "none"))


def find(domains, name_or_uuid, option="guests[].name"):
    """The domain of ``domains`` with this name or UUID, as ``Connection.domain`` finds it."""
    for domain in domains:
        if domain.name == name_or_uuid or (UUID_RE.match(name_or_uuid) and _same_uuid(domain.uuid, name_or_uuid)):
            return domain
    raise LibvirtError(unknown_domain(name_or_uuid, domains, option))


class Domain(object):
    """One libvirt domain as read from the host: its definition and, when it runs, what it has."""

    def __init__(self, handle, volume_path=None):
        self.handle = handle
        self.volume_path = volume_path
        self.name = handle.name()
        self.uuid = handle.UUIDString()
        self.active = bool(handle.isActive())
        self.persistent = bool(handle.isPersistent())
        # a transient guest's inactive XML is the definition it runs
        self.config_xml = handle.XMLDesc(XML_INACTIVE | XML_SECURE)
        self.live_xml = handle.XMLDesc(0) if self.active else None

    def is_active(self):
        """Whether the guest runs now: asked again, not as it was read."""
        return bool(self.handle.isActive())

    def shutdown(self):
        """Ask the guest's OS to shut down (ACPI); it may take its time, or ignore it."""
        self.handle.shutdown()

    def destroy(self):
        """Power the guest off at once, as pulling the plug does."""
        self.handle.destroy()

    def start(self):
        self.handle.create()

    def disks(self, live=False):
        """The disks of the definition (or of the running guest), pool volumes resolved."""
        xml_text = self.live_xml if live else self.config_xml
        return disks(xml_text, self.volume_path) if xml_text else []


# ---------------------------------------------------------------- domain XML

def parse(xml_text, what="domain XML"):
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise LibvirtError("libvirt returned %s that does not parse: %s" % (what, exc))


def keep_namespace_prefixes(xml_text):
    """ElementTree renames prefixes to ns0, ns1... on output; register the document's own (its
    <metadata>, <qemu:commandline>) so a definition written back keeps them."""
    for dummy, (prefix, uri) in ET.iterparse(io.StringIO(xml_text), events=("start-ns",)):
        if prefix and not re.match(r"ns\d+$", prefix):
            ET.register_namespace(prefix, uri)


def edited(xml_text, change):
    """Domain XML after ``change(root)``, everything it does not touch kept; None when
    ``change`` returns False (nothing to change)."""
    keep_namespace_prefixes(xml_text)
    root = parse(xml_text)
    if change(root) is False:
        return None
    return ET.tostring(root, encoding="unicode")


def redacted(xml_text):
    """Domain XML fit for a result or a diff: console passwords, which the secure XML a definition is
    written back from carries, are masked."""
    def mask(root):
        for graphics in root.iter("graphics"):
            if "passwd" in graphics.attrib:
                graphics.set("passwd", "********")
    return edited(xml_text, mask)


class Disk(object):
    """A ``<disk>`` of a domain: where its data lives on the host and how it is attached."""

    def __init__(self, element, volume_path=None):
        self.element = element
        self.type = element.get("type", "file")
        self.device = element.get("device", "disk")
        target = element.find("target")
        self.target = target.get("dev") if target is not None else None
        self.source = element.find("source")
        self.volume = None
        self.path = None
        if self.source is not None:
            if self.type == "volume" and self.source.get("volume"):
                self.volume = (self.source.get("pool"), self.source.get("volume"))
                self.path = volume_path(*self.volume) if volume_path else None
            else:
                self.path = self.source.get("file") or self.source.get("dev")
        self.readonly = element.find("readonly") is not None
        self.shareable = element.find("shareable") is not None

    @property
    def backing_files(self):
        """The files of its ``<backingStore>`` chain, nearest first (live XML has them)."""
        files = []
        node = self.element.find("backingStore")
        while node is not None:
            source = node.find("source")
            if source is not None and (source.get("file") or source.get("dev")):
                files.append(source.get("file") or source.get("dev"))
            node = node.find("backingStore")
        return files

    def source_seclabel(self, model):
        """The disk's own ``<seclabel>`` for this security model (or one without a model)."""
        if self.source is None:
            return None
        override = self.source.find("seclabel[@model='%s']" % model)
        return override if override is not None else self.source.find("seclabel")


def disks(domain_xml, volume_path=None):
    """Every ``<disk>`` of a domain (XML text or its parsed root), in document order;
    ``volume_path(pool, volume)`` resolves pool volumes to files (left None without it)."""
    root = domain_xml if hasattr(domain_xml, "findall") else parse(domain_xml)
    return [Disk(element, volume_path) for element in root.findall("devices/disk")]
