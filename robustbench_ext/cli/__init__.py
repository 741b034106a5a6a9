"""``rbx``, the command line (click): each command parses its options, calls the library, and prints."""

from .app import cli, main

__all__ = ["cli", "main"]


def __getattr__(name: str):
    """Names of rbx 0.1's ``cli`` module outside this face (DeprecationWarning)."""
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
