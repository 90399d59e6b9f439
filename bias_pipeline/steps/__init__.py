"""The pipeline's numbered steps; each module holds a pure computation and a thin I/O wrapper."""
