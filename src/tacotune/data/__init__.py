"""Datasets: reading layouts, validating rows, the prepared manifest, training batches."""
