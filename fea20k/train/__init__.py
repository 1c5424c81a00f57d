"""train stages."""
