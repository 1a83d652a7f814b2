"""rnnkit.export."""
