"""Tests of engine.settlement: Zengin payout files and signed documents."""
