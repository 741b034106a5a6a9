"""rbx's version (a leaf, so that provenance need not import the package's public facade)."""

__version__ = "0.2.0"
