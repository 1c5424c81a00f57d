"""validate stages."""
