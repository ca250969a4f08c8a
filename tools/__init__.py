"""One-off studies and result comparisons (not entry points): ``python -m tools.NAME``."""
