"""recsys test suite."""
