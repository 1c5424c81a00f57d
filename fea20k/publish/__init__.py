"""publish stages."""
