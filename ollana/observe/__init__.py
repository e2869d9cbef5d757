"""Seeing what a node does: Prometheus metrics, the recent-requests ring, the status page."""
