"""rbx's built-in attacks. Importing this package registers them in :data:`robustbench_ext.registry.ATTACKS`."""

from . import pgd  # noqa: F401
