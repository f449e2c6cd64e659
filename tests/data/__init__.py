"""Test suite of the data package."""
