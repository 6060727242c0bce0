"""TFDS builders of sltjax's sign language datasets, one package per dataset.

Build one with `python -m sltjax.data.build --dataset=NAME ...`; importing a builder module
registers it with TFDS under NAME.
"""
