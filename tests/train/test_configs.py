"""Every config in ``train/configs`` builds, names a registered task and model, and its
preprocessing specs and optimizer parse (without preparing any data)."""

import importlib
import pathlib

import pytest

from jaxvision import models, tasks
from jaxvision.data import preprocess
from jaxvision.training import optim, trainer

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[2] / "train" /
                                  "configs").glob("*.py") if p.stem not in ("__init__", "common"))
VARIANTS = {"mnist_dcgan": ("self_conditioned", "plain"),
            "cifar10_finetune_effnet": ("finetune", "hires", "probe"),
            "cifar10_mosaic_tagging": ("default", "tiny")}


@pytest.mark.parametrize("name,variant", [(n, v) for n in CONFIGS
                                          for v in VARIANTS.get(n, (None,))])
def test_config_builds(name, variant):
  module = importlib.import_module(f"train.configs.{name}")
  config = module.get_config(variant) if variant else module.get_config()
  task = tasks.create_task(config)
  assert task.name == config.get("task", "classification")
  one_device = config.copy_and_resolve_references()
  one_device.num_devices = 1  # the tests see 8 CPU devices; small detection batches need fewer
  trainer.check_run_config(one_device)  # the run settings, every optimizer, dropout in range
  for key in ("pp_train", "pp_eval"):
    if key in config:
      preprocess.parse(config[key])
  if task.name == "classification":
    assert config.model.name in models.MODELS
    optim.make_optimizer(config.optimizer, 100)
    if config.get("init_from") == "imagenet":
      models.pretrained.get_spec(config.model.name)
  if task.name == "detection":
    import jax
    import jax.numpy as jnp
    from jaxvision.tasks import detection
    optim.make_optimizer(config.optimizer, 100)
    model = detection.create_model(config, num_classes=3)
    size = config.canvas_size
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
    assert jax.tree.leaves(shapes["params"])
