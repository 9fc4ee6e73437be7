"""cryoclass: MPI-parallel, multi-GPU cryo-EM 2D classification.

Importing the package configures nothing (no logging handlers, no MPI, no device).
"""

__version__ = "0.1.0"
