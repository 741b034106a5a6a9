"""Evaluation: suites -> run request -> plan -> executor -> record.

:func:`evaluate` (what ``rbx run`` calls), the suites and their planning rule, the stage plan, the
executor that walks it with a resumable evaluation state, streaming over shards, ``torch.distributed``,
the gradient-masking checks, the majority rule for randomized models, robustness curves and the
common-corruption evaluation.
"""

from .api import CheckReport, check, evaluate, run
from .corruptions import evaluate_corruptions
from .request import RunRequest
from .result import Evaluation
from .streaming import stream_evaluate
from .suites import AttackSpec, Suite, ThreatSpec, load_suite, plan_benchmark

__all__ = ["AttackSpec", "CheckReport", "Evaluation", "RunRequest", "Suite", "ThreatSpec", "check", "evaluate",
           "evaluate_corruptions", "load_suite", "plan_benchmark", "run", "stream_evaluate"]
