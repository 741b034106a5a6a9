"""rbx's built-in attacks. Importing this package registers them in :data:`robustbench_ext.registry.ATTACKS`."""

from . import apgd, autoattack, cw, decision, deepfool, ensembles, fab, fgsm, fmn, multi_lp, pgd, pma, sparse, square, transforms  # noqa: F401
