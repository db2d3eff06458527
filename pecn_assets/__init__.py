"""Dagster wiring for PECN: assets, partitions, resources, checks, jobs, one Definitions."""
