"""rbx's built-in defenses and training baselines (training objectives and inference wrappers).

Importing this package registers them in :data:`robustbench_ext.registry.DEFENSES`.
"""

from . import baselines, ltd, mtard, ramp, randomized, smoothing_mixer, sovr  # noqa: F401
