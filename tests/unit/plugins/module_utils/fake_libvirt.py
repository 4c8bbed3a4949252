"""One fake libvirt-python for the unit tests of every module that talks to libvirt.

Mocked because the unit tier runs without a libvirt daemon; the integration tier runs the same
code against the real one. It has only the calls the collection's libvirt layer and cores make,
each with libvirt's behaviour: lookups of what does not exist raise libvirtError with libvirt's
error code, XMLDesc honours the inactive flag, volumes live in pools.
"""

import xml.etree.ElementTree as ET

from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt

VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_SECRET = 66


class libvirtError(Exception):  # noqa: N801 - libvirt's spelling
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code

    def get_error_code(self):  # noqa: N802
        return self.code

    def get_error_message(self):  # noqa: N802
        return str(self)


class FakeDomain(object):
    """A domain handle. ``config_xml`` is its definition, ``live_xml`` (None: shut off) what it runs."""

    def __init__(self, name, uuid="00000000-0000-4000-8000-000000000001", config_xml=None, live_xml=None,
                 active=None, persistent=True):
        self._name = name
        self.uuid = uuid
        self.config_xml = config_xml or "<domain type='kvm'><name>%s</name><devices/></domain>" % name
        self.live_xml = live_xml
        self.active = live_xml is not None if active is None else active
        self.persistent = persistent
        self.blkio = {1: {"weight": 100, "device_read_bytes_sec": ""},
                      2: {"weight": 0, "device_read_bytes_sec": ""}}
        self.sched = {1: {"cpu_shares": 1024}, 2: {"cpu_shares": 0}}
        self.calls = []
        self.fail_on = None

    def name(self):
        return self._name

    def UUIDString(self):  # noqa: N802
        return self.uuid

    def isPersistent(self):  # noqa: N802
        return self.persistent

    def XMLDesc(self, flags):  # noqa: N802
        if flags & _libvirt.XML_INACTIVE or not self.active:
            return self.config_xml
        return self.live_xml or self.config_xml

    def blkioParameters(self, flag):  # noqa: N802
        return dict(self.blkio[flag])

    def schedulerParametersFlags(self, flag):  # noqa: N802
        return dict(self.sched[flag])

    def setBlkioParameters(self, params, flag):  # noqa: N802
        self.calls.append(("blkio", flag, params))
        if self.fail_on == "blkio":
            self.fail_on = None  # libvirt refuses the new value, accepts the old one back
            raise libvirtError("refused")
        self.blkio[flag].update(params)

    def setSchedulerParametersFlags(self, params, flag):  # noqa: N802
        self.calls.append(("sched", flag, params))
        self.sched[flag].update(params)

    # the life cycle: a guest whose OS answers ACPI (answers_shutdown) is shut off after it was
    # asked, once the caller has looked again; one that does not keeps running until destroyed
    answers_shutdown = True
    starts = True

    def shutdown(self):
        if not self.active:
            raise libvirtError("Requested operation is not valid: domain is not running", 55)
        self.calls.append(("shutdown",))
        self.shutting_down = self.answers_shutdown

    def destroy(self):
        if not self.active:
            raise libvirtError("Requested operation is not valid: domain is not running", 55)
        self.calls.append(("destroy",))
        self.active = False

    def create(self):
        if self.active:
            raise libvirtError("Requested operation is not valid: domain is already running", 55)
        self.calls.append(("create",))
        if not self.starts:
            raise libvirtError("internal error: process exited while connecting to monitor")
        self.active = True
        self.shutting_down = False

    shutting_down = False

    def isActive(self):  # noqa: N802 - asked again, a guest that was shutting down is off
        if self.shutting_down:
            self.shutting_down = False
            self.active = False
            return True
        return self.active


class FakeNWFilter(object):
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


class FakeVolume(object):
    """A volume: {volume: path} in a pool, or {volume: (path, format)} where its format matters."""

    def __init__(self, name, path, volume_format=None):
        self._name = name
        self._path = path
        self.format = volume_format

    def name(self):
        return self._name

    def path(self):
        return self._path

    def XMLDesc(self, _flags):  # noqa: N802
        target = "<format type='%s'/>" % self.format if self.format else ""
        return "<volume type='file'><name>%s</name><target><path>%s</path>%s</target></volume>" % (
            self._name, self._path, target)


class FakePool(object):
    def __init__(self, volumes, active=True):
        self.volumes = volumes
        self.active = active
        self.refreshed = 0

    def _volume(self, name):
        found = self.volumes[name]
        return FakeVolume(name, *found) if isinstance(found, tuple) else FakeVolume(name, found)

    def storageVolLookupByName(self, name):  # noqa: N802
        if name not in self.volumes:
            raise libvirtError("Storage volume not found: no storage vol with matching name '%s'" % name)
        return self._volume(name)

    def isActive(self):  # noqa: N802
        return self.active

    def refresh(self, _flags):
        self.refreshed += 1

    def listAllVolumes(self, _flags):  # noqa: N802
        return [self._volume(name) for name in self.volumes]


class FakeConn(object):
    """A connection: domains, capabilities, pools ({pool: {volume: path}}) and what was defined."""

    def __init__(self, domains=(), capabilities="<capabilities><host/></capabilities>", pools=None,
                 uri="qemu:///system", nwfilters=("clean-traffic",), refuse_define=None):
        self.handles = list(domains)
        self.capabilities = capabilities
        self.pools = pools or {}
        self.uri = uri
        self.filters = list(nwfilters)
        self.refuse_define = refuse_define
        self.defined = []

    def listAllDomains(self, _flags):  # noqa: N802
        return list(self.handles)

    def _find(self, key, value):
        for handle in self.handles:
            if key(handle) == value:
                return handle
        raise libvirtError("Domain not found: no domain with matching %s" % value, VIR_ERR_NO_DOMAIN)

    def lookupByName(self, name):  # noqa: N802
        return self._find(FakeDomain.name, name)

    def lookupByUUIDString(self, uuid):  # noqa: N802
        return self._find(lambda handle: handle.uuid.replace("-", ""), uuid.lower().replace("-", ""))

    def getURI(self):  # noqa: N802
        return self.uri

    def getCapabilities(self):  # noqa: N802
        return self.capabilities

    def defineXML(self, xml_text):  # noqa: N802
        """Like libvirt: the definition of the domain with that name (or a new one) becomes xml_text."""
        if self.refuse_define and self.refuse_define in xml_text:
            raise libvirtError("XML error: refused %s" % self.refuse_define)
        self.defined.append(xml_text)
        name = ET.fromstring(xml_text).findtext("name")
        for handle in self.handles:
            if handle.name() == name:
                handle.config_xml = xml_text
                return handle
        handle = FakeDomain(name, ET.fromstring(xml_text).findtext("uuid") or "00000000-0000-4000-8000-00000000ffff",
                            config_xml=xml_text)
        self.handles.append(handle)
        return handle

    def listAllNWFilters(self, _flags):  # noqa: N802
        return [FakeNWFilter(name) for name in self.filters]

    def storagePoolLookupByName(self, name):  # noqa: N802
        if name not in self.pools:
            raise libvirtError("Storage pool not found: no storage pool with matching name '%s'" % name,
                               VIR_ERR_NO_STORAGE_POOL)
        pool = self.pools[name]
        return pool if isinstance(pool, FakePool) else FakePool(pool)

    def secretLookupByUUIDString(self, uuid):  # noqa: N802
        raise libvirtError("Secret not found: no secret with matching uuid '%s'" % uuid, VIR_ERR_NO_SECRET)


class FakeLibvirt(object):
    """The libvirt-python module: its constants, its error, open() of one fake connection."""

    VIR_DOMAIN_AFFECT_LIVE = 1
    VIR_DOMAIN_AFFECT_CONFIG = 2
    VIR_ERR_NO_SECRET = VIR_ERR_NO_SECRET
    libvirtError = libvirtError

    def __init__(self, conn=None, refuse=None):
        self.conn = conn if conn is not None else FakeConn()
        self.refuse = refuse

    def registerErrorHandler(self, _handler, _context):  # noqa: N802
        pass

    def open(self, uri):
        if self.refuse:
            raise libvirtError(self.refuse)
        self.conn.uri = uri
        return self.conn


def connection(*domains, **kwargs):
    """A ``_libvirt.Connection`` over a fake connection holding these domain handles."""
    return _libvirt.Connection(FakeLibvirt(FakeConn(domains, **kwargs)))
