"""rnnkit.runtime."""
