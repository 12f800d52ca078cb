"""Metrics: on-device accumulators and host-side evaluators (classification, COCO detection,
generative models, multi-label tagging)."""

from jaxvision.metrics.classification import classification_report, confusion_matrix
from jaxvision.metrics.coco import coco_evaluate, detections_from_arrays, ground_truth_from_arrays
from jaxvision.metrics.generative import (classifier_features, classifier_score,
                                          classifier_score_stats, conditional_accuracy,
                                          frechet_classifier_distance, frechet_distance,
                                          gaussian_stats, per_class_accuracy)
from jaxvision.metrics.multilabel import (average_precision, mean_average_precision,
                                          multilabel_report, tune_thresholds)
