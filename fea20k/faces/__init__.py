"""faces stages."""
