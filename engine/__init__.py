"""setapay-engine: the points and settlement engine of Setagaya PAY.

The package root holds the domain core (records, rating, ledger rules). The
core is plain values in, plain values out: it never imports web, database or
cache code, so it can be tested and benchmarked on its own.
"""
