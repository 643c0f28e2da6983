"""Operational tables and checks (accounting, status, maintenance, quality)."""
