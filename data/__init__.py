"""Data formats, converters for real datasets and the synthetic world (see data/README.md)."""
