"""Helpers that launch.sh runs (`python -m scripts.NAME`); each also works on its own (--help)."""
