"""Examples a fleet can copy; see examples/README.md. The test suite runs each of them."""
