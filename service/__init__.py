"""Gatehouse: registration, login, JWT access tokens and rotating refresh tokens.

The package root imports nothing, so gunicorn's master can read the settings without
loading prometheus_client or creating pools; the app lives in service.app.
"""
