"""Signing keys, access tokens (JWT) and the JWKS document."""
