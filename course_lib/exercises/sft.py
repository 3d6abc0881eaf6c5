"""Exercises of notebook NN (to be written)."""
