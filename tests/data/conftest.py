"""Fixtures of the data tests (defined in data_fixtures.py)."""

from data_fixtures import _isolated_data_dir, closed_port_url, http_server  # noqa: F401
