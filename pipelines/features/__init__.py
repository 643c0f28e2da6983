"""Recommendation features: implicit feedback, ALS, offline evaluation, batch retrain."""
