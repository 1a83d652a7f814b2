"""rnnkit.toolkit."""
