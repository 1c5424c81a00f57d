"""ingest stages."""
