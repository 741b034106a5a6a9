"""Attacks' common ground: threat models and their geometry, losses, the attack contract, the shared
iterative loop, the cascade, minimum-norm attacks and the search switches.

The attack plugins themselves (PGD, APGD, PMA, ...) live in :mod:`robustbench_ext.attacks` and register
in :data:`robustbench_ext.registry.ATTACKS`; see the "adding an attack" guide in the docs.
"""

from .base import Attack, AttackBase, MultiThreatAttack, MultiThreatResult, check_in_threat_model
from .cascade import Ensemble, LabelledAttack, cascade_stages, run_cascade
from .context import AttackContext, AttackResult, SampleSeeds
from .geometry import Geometry, get_geometry
from .iterative import IterativeAttack, Segment, Track
from .losses import LOSSES
from .min_norm import MinNormAttack
from .search import SearchOptions
from .threat import ThreatModel

__all__ = ["Attack", "AttackBase", "AttackContext", "AttackResult", "Ensemble", "Geometry", "IterativeAttack",
           "LOSSES", "LabelledAttack", "MinNormAttack", "MultiThreatAttack", "MultiThreatResult", "SampleSeeds",
           "SearchOptions", "Segment", "ThreatModel", "Track", "cascade_stages", "check_in_threat_model",
           "get_geometry", "run_cascade"]


def __getattr__(name: str):
    """Names of rbx 0.1's ``attack`` module outside this face (DeprecationWarning)."""
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
