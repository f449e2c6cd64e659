"""Shared test setup. TensorFlow's C++ INFO logs are noise in test output."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
