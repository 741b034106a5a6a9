"""``python -m robustbench_ext.cli`` is ``rbx`` (the entry point, with its signal handling)."""

from .entry import main

main()
