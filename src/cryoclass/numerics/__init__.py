"""Pure array functions (NumPy or CuPy): no MPI, no files, no config."""
