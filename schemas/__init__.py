"""Contracts between the stages of x2ct-pipeline (pydantic v2).

Stages exchange files whose layout is described here: manifest rows, stage
configs and the provenance each store records. Nothing in this package imports
``pipeline`` or ``trainer``.
"""
