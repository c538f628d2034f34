"""Passwords inside URLs (a storage or tracking URI) never reach a log, a param or a file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def masked(url: str) -> str:
    """`url` with the password of its user part replaced by ***, anything else unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{MASK}@{host}"))


def masked_tree(tree: Any) -> Any:
    """A config tree (dicts and lists) with every string that is a URL with a password masked."""
    if isinstance(tree, Mapping):
        return {key: masked_tree(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [masked_tree(value) for value in tree]
    return masked(tree) if isinstance(tree, str) and "@" in tree else tree
