"""ASGI entry point for uvicorn workers: the app built from the environment's settings.

Workers do not migrate: `setapay serve` migrates once before starting them.
"""

from api.app import create_app

app = create_app(migrate=False)
