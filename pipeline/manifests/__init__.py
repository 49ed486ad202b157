"""Manifest builders: CT-RATE, RadChest-CT style NumPy sets, and a generic NIfTI + CSV set."""
