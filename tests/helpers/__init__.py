"""Helpers the tests import as a package (``tests.helpers``; pyproject sets
``pythonpath = ["."]``, so nothing depends on pytest's rootdir insertion):

- :mod:`tests.helpers.training`: composing the real config, fakes of a data module and
  a model, fault injection, tiny datasets on disk.
- :mod:`tests.helpers.data`: tiny datasets in every official and mirror layout and a
  loopback HTTP server.
"""
