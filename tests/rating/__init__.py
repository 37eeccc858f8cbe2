"""Tests of engine.rating: the compiled kernel, its twin, and SPEC §4."""
