"""annotate stages."""
