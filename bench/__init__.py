"""Load scenarios and the comparison harness (`make bench`)."""
