"""A host's files under a temporary root, for the cores that read and write a root directory."""

import os


def put(root, relative, text):
    """Write text at root/relative (a leading / is the root's), making its directories."""
    path = os.path.join(str(root), relative.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def read(root, relative):
    with open(os.path.join(str(root), relative.lstrip("/"))) as handle:
        return handle.read()
