"""select stages."""
