"""Test and benchmark helpers (scripted OpenAI-compatible server)."""
