"""Benchmarks of starkeep_sync: ``python -m bench --help``.

Every workload is measured next to a raw baseline taken in the same run on
the same machine (bulk inserts, plain selects, file copies), so the numbers
that matter are ratios, not absolute throughput of a shared machine.
"""
