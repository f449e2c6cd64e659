"""Your own interaction logs: Parquet/CSV/TSV files of any size, streamed into tf.data.

Work in progress: see :mod:`recsys.data.interactions.module`.
"""
