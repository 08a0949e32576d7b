"""Controller: worker registry, dispatch with failover, and the single OpenAI-compatible gateway."""
