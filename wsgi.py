"""gunicorn entry point: each worker builds its own app, and so its own pools, after fork."""

from service.app import create_app

app = create_app()
