"""Training supervision: alignment metrics, early stopping, divergence guard."""
