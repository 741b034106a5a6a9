"""rbx's built-in defenses and training baselines (training objectives and inference wrappers).

Importing this package registers them in :data:`robustbench_ext.registry.DEFENSES`.
"""

from . import baselines, ltd, ramp, sovr  # noqa: F401
