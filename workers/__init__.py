"""Model worker: one process per model replica, serving the OpenAI-compatible chat API over one Engine."""
