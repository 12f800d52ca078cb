"""Thin trainers and experiment configs."""
