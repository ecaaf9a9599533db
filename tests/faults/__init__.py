"""Fault campaigns (issue 16): a live workload, random seeded faults, and a checker that
compares what the client was told with what the books hold. ``python -m tests.faults`` or
``bench/faults.py`` runs one; docs/operations.md says how to read its report."""
