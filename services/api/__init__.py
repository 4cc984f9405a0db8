"""The management API (see app.py)."""
