"""One-off studies and result comparisons (run as ``python -m tools.NAME``; not entry points)."""
