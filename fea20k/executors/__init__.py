"""Executors other than the local one (each module provides ``run_map_chunks``)."""
