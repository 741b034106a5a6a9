"""Exceptions that carry a message meant for the user.

Every error a user can cause (a bad name, a bad eps, a missing file) is an :class:`RbxError`.
The CLI prints its message on one line and exits with its ``exit_code``; library callers can
catch it like any exception. Anything else that escapes is a bug in rbx.
"""

from __future__ import annotations


class RbxError(Exception):
    """An error caused by input or environment, with a message that says what to do."""

    exit_code: int = 2


class UnknownNameError(RbxError, KeyError):
    """A name that is not in a registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ThreatModelError(RbxError, ValueError):
    """A threat model that cannot be parsed or has an invalid radius."""


class DataError(RbxError):
    """A dataset that cannot be found, read or is malformed."""


class ModelLoadError(RbxError):
    """A model or checkpoint that cannot be found or loaded."""


class UnsupportedNormError(RbxError, ValueError):
    """An attack asked to run under a norm it does not implement."""


class AttackContractError(RbxError):
    """An attack returned an adversarial example outside the threat model: a bug in that attack."""

    exit_code = 1


class ResultsError(RbxError):
    """The results directory or a record cannot be written or read."""
