"""What an evaluation returns: the finished run's record and per-sample flags, printable as its table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..records.schema import RunRecord, SampleFlags
from ..records.store import write_run
from ..reporting.tables import format_table


@dataclass
class Evaluation:
    """A finished run (an attack evaluation or a corruption evaluation): the record and the per-sample flags.

    ``print(ev)`` (or ``ev.table()``) shows the run's table, as ``rbx run`` prints it; ``ev.write(results_dir)``
    writes the record and flags (``path`` then says where the record is).
    """

    record: RunRecord
    flags: SampleFlags
    path: Path | None = field(default=None, compare=False)

    @property
    def stem(self) -> str:
        """File name stem for this run's record and flags (its run id)."""
        return self.record.run_id

    def write(self, results_dir: Path) -> Path:
        """Write ``records/<stem>.{npz,json}`` atomically; return the JSON path."""
        self.path = write_run(self.record, self.flags, results_dir, self.stem)
        if self.path.stem != self.record.run_id:  # the stem was taken: the record was written under the next free one
            self.record = dataclasses.replace(self.record, run_id=self.path.stem)
        return self.path

    def table(self) -> str:
        """The run's table (:func:`robustbench_ext.reporting.tables.format_table`)."""
        return format_table(self.record)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        r = self.record
        return (f"<Evaluation {r.model.get('name')} on {r.dataset.get('name')} (n={r.n}): clean {r.clean.accuracy:.3f}, "
                f"union {r.union.accuracy:.3f}>")
