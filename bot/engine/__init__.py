"""Generation engine: requests, image handling, pipeline loading and the GPU executor. No Discord here."""
