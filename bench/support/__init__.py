"""Helpers of the benchmarks that are not benchmarks themselves (not run by the CI glob)."""
