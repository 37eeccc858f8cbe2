"""The HTTP API of setapay-engine (FastAPI): thin routers over the engine."""
