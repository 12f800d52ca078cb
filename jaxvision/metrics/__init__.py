"""Metrics: on-device accumulators and host-side evaluators."""

from jaxvision.metrics.classification import classification_report, confusion_matrix
