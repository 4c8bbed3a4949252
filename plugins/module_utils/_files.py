# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes that keep owner, mode and SELinux label, and the one way a core changes
several files: all of them, or none. Private to the collection.

The rule for modes and directories, for every core: a file that exists keeps its owner, mode and
label; a new file gets ``PUBLIC`` (0644, as packages ship configuration) or ``PRIVATE`` (0600, for
what shows a local user the host's defences that only root may list: audit rules, the firewall's
table); a missing directory is made 0755, and removed again when a failure puts things back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import tempfile

SELINUX_XATTR = "security.selinux"
PUBLIC = 0o644
PRIVATE = 0o600
DIRECTORY = 0o755


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


def _mode(path):
    try:
        return os.lstat(path).st_mode & 0o7777
    except OSError:
        return None


class FileChange(object):
    """One file a core changes: its text before (None: absent) and after (None: removed).

    ``shown`` is the path as the diff and the result name it (the host's path when a core works
    under another root); ``mode`` is a new file's.
    """

    def __init__(self, path, before, after, mode=PUBLIC, shown=None):
        self.path = path
        self.before = before
        self.after = after
        self.mode = mode
        self.shown = shown or path
        self.before_mode = _mode(path) if before is not None else None

    def diff(self):
        return dict(before=self.before or "", after=self.after or "",
                    before_header=self.shown, after_header=self.shown)


def change_to(path, after, mode=PUBLIC, shown=None):
    """The change that leaves path holding after (None: absent), or None when it already does."""
    before = read_text(path) if os.path.lexists(path) else None
    if before == after:
        return None
    return FileChange(path, before, after, mode, shown)


class NotRestored(Exception):
    """A failure after which some files could not be put back; the message names them."""

    def __init__(self, cause, failures):
        super(NotRestored, self).__init__("%s; could not put back %s" % (
            cause, ", ".join("%s (%s)" % (path, getattr(exc, "strerror", None) or exc) for path, exc in failures)))


def _make_directories(directory, made):
    """Make directory and its missing parents, adding each to made as soon as it exists, so a
    failure half-way still leaves made naming every directory to remove."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        os.mkdir(path, DIRECTORY)
        made.append(path)


def _write(change):
    if change.after is None:
        if os.path.lexists(change.path):
            os.unlink(change.path)
    else:
        atomic_write(change.path, change.after, mode=change.mode)


def _restore(change):
    if change.before is None:
        if os.path.lexists(change.path):
            os.unlink(change.path)
    else:
        atomic_write(change.path, change.before, mode=change.before_mode or change.mode)


def write_all(changes, then=None):
    """Write every change, then call ``then()`` (the load or reload that makes the files count).

    On a failure of either, every file written is put back as it was (and the directories made
    for them removed) and the failure raised again; when a file cannot be put back, NotRestored
    is raised instead, naming it and the failure.
    """
    written, made = [], []
    try:
        for change in changes:
            _make_directories(os.path.dirname(change.path), made)
            # a write that fails leaves the file as it was: only those done are put back
            _write(change)
            written.append(change)
        if then is not None:
            then()
    except Exception as exc:
        failures = []
        for change in reversed(written):
            try:
                _restore(change)
            except (IOError, OSError) as error:
                failures.append((change.shown, error))
        for directory in sorted(made, key=lambda path: path.count(os.sep), reverse=True):
            try:
                os.rmdir(directory)
            except OSError:
                pass
        if failures:
            raise NotRestored(exc, failures)
        raise
