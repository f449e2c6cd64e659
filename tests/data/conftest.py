"""Fixtures of the data tests (defined in tests/helpers/data.py)."""

from tests.helpers.data import _isolated_data_dir, closed_port_url, http_server  # noqa: F401
