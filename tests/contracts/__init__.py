"""Contract test suites that every adapter of a core interface subclasses (bus, store)."""
