"""Foundations every layer may use: errors, safe text, randomness, input bounds, metrics."""
