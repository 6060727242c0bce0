"""Reusable NNX layers; every parameter carries logical axis names (see sltjax/sharding.py)."""
