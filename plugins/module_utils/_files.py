# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes that keep owner, mode and SELinux label. Private to the collection."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import tempfile

SELINUX_XATTR = "security.selinux"


def read_text(path, default=None):
    try:
        with open(path) as handle:
            return handle.read()
    except IOError as exc:
        if exc.errno == errno.ENOENT and default is not None:
            return default
        raise


def copy_attributes(source, target):
    """Give target the owner, mode and SELinux label of source (label only where supported)."""
    stat = os.stat(source)
    os.chown(target, stat.st_uid, stat.st_gid)
    os.chmod(target, stat.st_mode & 0o7777)
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return
    try:
        label = getxattr(source, SELINUX_XATTR)
    except OSError:
        return
    try:
        os.setxattr(target, SELINUX_XATTR, label)
    except OSError as exc:
        # without SELinux in the kernel the label is still an xattr root may copy; only a
        # filesystem without xattr support refuses, and then there is no label to keep
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, content, mode=0o644):
    """Write content (str or bytes) to path atomically: temp file beside it, fsync, rename.

    An existing file's owner, mode and label are kept; a new file gets ``mode``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    data = content.encode("utf-8") if not isinstance(content, bytes) else content
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if os.path.exists(path):
            copy_attributes(path, tmp)
        else:
            os.chmod(tmp, mode)
        os.rename(tmp, path)
        fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
