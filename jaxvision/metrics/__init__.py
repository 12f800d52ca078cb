"""jaxvision.metrics."""
from jaxvision.metrics.coco import coco_evaluate, detections_from_arrays, ground_truth_from_arrays
