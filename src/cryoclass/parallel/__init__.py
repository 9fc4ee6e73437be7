"""Partitioning (pure) and the few collectives the driver needs."""
