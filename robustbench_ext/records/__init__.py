"""Records: the schema of a run's record (per-sample flags, the union rule beside them, the one record
builder), accuracies with their intervals, provenance, and records on disk.

A record is data (``rbx.record/1`` JSON + an ``.npz`` of per-sample flags); every table, board and plot
is derived from records (:mod:`robustbench_ext.reporting`).
"""

from .accuracies import Accuracy
from .schema import SCHEMA, RunRecord, RunSettings, SampleFlags, StageResult, ThreatResult, build_record, union_flags
from .store import iter_records, read_flags, read_record, write_run

__all__ = ["Accuracy", "RunRecord", "RunSettings", "SCHEMA", "SampleFlags", "StageResult", "ThreatResult",
           "build_record", "iter_records", "read_flags", "read_record", "union_flags", "write_run"]


def __getattr__(name: str):
    """Names of rbx 0.1's ``records`` module outside this face (DeprecationWarning)."""
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
