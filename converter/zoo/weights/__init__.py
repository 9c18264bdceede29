"""The reference detector's trained weights and their sidecar, shipped as package data.

`edgegap zoo train-detector` reproduces them; see docs/detector.md.
"""
