"""Metrics: on-device accumulators and host-side evaluators."""

from jaxvision.metrics.classification import classification_report, confusion_matrix
from jaxvision.metrics.coco import coco_evaluate, detections_from_arrays, ground_truth_from_arrays
