"""rbx's built-in defenses (training objectives and inference wrappers).

Importing this package registers them in :data:`robustbench_ext.registry.DEFENSES`. None are
built in yet: RAMP, LTD, SOVR and the adaptive smoothing mixer arrive with their issues.
"""
