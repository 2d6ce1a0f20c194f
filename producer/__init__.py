"""mpq's front door: the Python API and the `mpq` command line."""
