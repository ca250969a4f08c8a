"""One-off studies and result comparisons (not entry points; see docs/layout in shared guides)."""
