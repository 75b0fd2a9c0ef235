"""Datasets: CSV loading, the bundled Banking77, and seeded streams with simulated annotators."""
