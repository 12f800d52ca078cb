"""EfficientNet-Lite0's ImageNet weights on CIFAR-10: fine-tuned (default, then ``:hires``) or
the head alone (``:probe``).

CIFAR-10 is read from ``$JAXVISION_DATA_DIR/cifar10`` (python batches) or, when absent, from
the JPEG zip ``cifar10-jpeg/cifar10-jpeg.zip`` (see ``jaxvision/data/builders/cifar.py``). The
32x32 images are resized to ``IMAGE_SIZE`` (``HIRES_SIZE`` for ``:hires``) and scaled as the
pretrained weights expect ((x - 127) / 128). Figures (docs/RESULTS.md, "Transfer learning"):
test accuracy 0.9118 after the default 3 epochs, 0.9151 after ``:hires``, 0.9150 (0.9204 with
``eval_flip_tta``) after a second ``:hires`` epoch at half its learning rate; the head alone
0.7485 (a converged logistic regression on 160-px features, ``benchmarks/linear_probe.py``,
gives 0.8174).

  python -m train.main --config=train/configs/cifar10_finetune_effnet.py --workdir=runs/effnet_ft
  python -m train.main --config=train/configs/cifar10_finetune_effnet.py:hires \\
      --workdir=runs/effnet_ft160 --config.init_from=runs/effnet_ft
  python -m train.main --config=train/configs/cifar10_finetune_effnet.py:hires \\
      --workdir=runs/effnet_ft160b --config.init_from=runs/effnet_ft160 \\
      --config.optimizer.learning_rate=1.5e-4
  python -m train.main --config=train/configs/cifar10_finetune_effnet.py:probe \\
      --workdir=runs/effnet_probe
"""

import ml_collections

from train.configs import common

IMAGE_SIZE = 112
HIRES_SIZE = 160
SCALE = "value_range(-0.9921875, 1)"  # (x - 127) / 128 on 0-255 pixels
VARIANTS = ("finetune", "hires", "probe")


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
  """``'finetune'`` (default: every layer for 3 epochs at 112 px, the backbone at half the
  head's learning rate), ``'hires'`` (``...cifar10_finetune_effnet.py:hires``: one more epoch
  at 160 px from a finished ``finetune`` workdir, ``--config.init_from=<that workdir>``) or
  ``'probe'`` (``...:probe``: the head only, the backbone frozen)."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; found {variant!r}")
  size = HIRES_SIZE if variant == "hires" else IMAGE_SIZE
  c = common.classification_config()
  c.dataset = "cifar10"
  c.model = ml_collections.ConfigDict({"name": "EfficientNetLite0"})
  c.pp_train = f"random_crop(32, pad=4)|flip_lr|resize({size})|{SCALE}"
  c.pp_eval = f"resize({size})|{SCALE}"
  c.init_from = "imagenet"
  c.head = "^classifier/"
  c.batch_size = 64
  c.eval_batch_size = 250
  c.optimizer.name = "adamw"
  c.optimizer.schedule = "warmup_cosine"
  if variant == "probe":
    c.freeze_backbone = True
    c.num_epochs = 2
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 200
  elif variant == "finetune":
    c.backbone_lr_multiplier = 0.5
    c.num_epochs = 3
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 300
    c.optimizer.weight_decay = 1e-4
  else:  # hires: FixRes-style, a short fine-tune at the larger test resolution
    c.init_from = "runs/effnet_ft"
    c.backbone_lr_multiplier = 0.5
    c.num_epochs = 1
    c.optimizer.learning_rate = 3e-4
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 1e-4
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  return c
