"""The mistake docs/web-apps.rst warns about: a client started when the app is imported.

Under ``gunicorn --preload`` the master imports the app, so the master runs an rkat-rpc
and every worker inherits a client that answers ``MeerkatError("FORKED")``.
tests/test_web_flask.py serves it as the control of its process count.
"""

import conversations
from flask_app import app

conversations.start()

__all__ = ["app"]
