"""jaxvision.training."""
