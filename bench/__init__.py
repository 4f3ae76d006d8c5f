"""Load benchmarks of Gatehouse against a floor app and a peer (`make bench`, `make soak`)."""
