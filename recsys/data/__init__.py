"""Datasets: fetched, verified, cached as Parquet, split, and streamed with tf.data.

Importing this package does not import TensorFlow; only
:mod:`recsys.data.pipelines` (and the data modules' dataset methods) do.
"""
