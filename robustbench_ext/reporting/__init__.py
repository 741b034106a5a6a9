"""What reads records: the run table, leaderboards (Markdown, CSV, HTML), plots, the regression gate
and the RobustBench export. Nothing here runs a model."""

from .boards import write_leaderboard
from .regress import compare
from .tables import format_table, write_report

__all__ = ["compare", "format_table", "write_leaderboard", "write_report"]
