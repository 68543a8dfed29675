"""Benchmarks of rlm side by side with the reference ``rlms`` package (``python -m bench``)."""
