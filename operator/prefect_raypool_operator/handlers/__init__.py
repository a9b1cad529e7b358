"""Thin kopf handlers: each one finds the pool and calls `reconcile`. Registered in main.py."""
