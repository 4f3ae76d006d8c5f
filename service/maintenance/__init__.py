"""Maintenance jobs run from the `gatehouse` command: token purge and backups."""
