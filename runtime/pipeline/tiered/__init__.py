"""The tiered start: serve on uncompiled pieces while compile workers build
them, and swap each compiled piece in (NOTE: [a tiered start] in ``tier.py``)."""
