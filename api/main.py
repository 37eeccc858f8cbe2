"""ASGI entry point for uvicorn workers: the app built from the environment's settings.

Workers do not migrate: `setapay serve` migrates once before starting them. Each worker writes
JSON lines (api/access_log.py): one per request on `setapay.access`, and the engine's own logs.
"""

import os

from api import access_log
from api.app import create_app
from engine import collector

access_log.configure(os.environ.get("SETAPAY_LOG_LEVEL", "info"))
app = create_app(migrate=False)
collector.tune()
