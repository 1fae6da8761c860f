"""Support for tests/test_web_*.py: the documented web apps served for real by gunicorn."""
