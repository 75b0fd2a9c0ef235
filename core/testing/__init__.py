"""Contract suites every bus and store adapter passes, and crash helpers; shipped like a library's testing module."""
