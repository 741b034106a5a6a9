"""``rbx``, the command line (click): each command parses its options, calls the library, and prints.

``cli`` (the click group) and ``main`` (the console script) load on first use, so that the console script's
own module (:mod:`robustbench_ext.cli.entry`) starts without loading torch and handles Ctrl-C during start-up.
"""

__all__ = ["cli", "main"]


def __getattr__(name: str):
    if name == "cli":
        from .app import cli

        return cli
    if name == "main":
        from .entry import main

        return main
    # names of rbx 0.1's ``cli`` module outside this face (DeprecationWarning)
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
