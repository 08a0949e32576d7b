"""Code shared by the controller, the workers and the web UI: wire models, errors, HTTP helpers."""
