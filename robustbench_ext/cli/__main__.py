"""``python -m robustbench_ext.cli`` is ``rbx``."""

from .app import main

main()
