"""PECN ML library: data, models, training, sampling, metrics, statistics, reports.

Plain functions and frozen dataclass configs, usable from a notebook. No Dagster imports.
"""
