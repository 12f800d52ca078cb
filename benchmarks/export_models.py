"""The models of the export benchmarks (random init), as ``jaxvision.export`` serving specs.

Each entry gives ``(spec, reference, inputs)``: the serving spec, a reference computed apart
from the exporter (TF preprocessing of ``jaxvision.data`` and the model's own ``apply``,
jitted), and ``inputs(batch, seed)`` (uint8 images or standard-normal latents).
Configurations: ``mnist_cnn`` (SimpleCNN), ``cifar10_resnet18`` (ResNet-18, CIFAR stem),
``mnist_lstm`` (row-LSTM) and the plain ``mnist_dcgan`` generator, at their shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import export, models
from jaxvision.data import images as image_io
from train.configs import cifar10_resnet18, mnist_cnn, mnist_dcgan, mnist_lstm


def _softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _classifier(config, image_shape, seed):
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  model = models.create_model(config.model.name, num_classes=10, **kwargs)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape)), train=False)
  spec = export.classifier_serving(model, variables, image_shape=image_shape,
                                   pp=config.pp_eval, name=config.model.name)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])

  def reference(images):
    logits = apply(variables, image_io.preprocess_images(images, pp=config.pp_eval))
    return {"logits": np.asarray(logits), "probabilities": _softmax64(logits)}

  def inputs(batch, seed):
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, (batch, *image_shape), endpoint=True).astype(
        np.uint8)}

  return spec, reference, inputs


def simple_cnn():
  return _classifier(mnist_cnn.get_config(), (28, 28, 1), 0)


def resnet18_cifar():
  return _classifier(cifar10_resnet18.get_config(), (32, 32, 3), 1)


def row_lstm():
  return _classifier(mnist_lstm.get_config(), (28, 28, 1), 2)


def dcgan_generator():
  c = mnist_dcgan.get_config("plain").generator
  generator = models.Generator(latent_dim=c.latent_dim, image_shape=(28, 28, 1),
                               base_features=c.base_features)
  variables = generator.init(jax.random.PRNGKey(3), jnp.zeros((1, c.latent_dim)), train=False)
  # BatchNorm statistics away from their (0, 1) initial values, as after training.
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda a: np.asarray(a) + 0.2 * rng.random(a.shape, np.float32),
                       variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}
  spec = export.generator_serving(generator, variables, name="DCGAN generator")
  apply = jax.jit(lambda v, z: generator.apply(v, z, train=False))

  def reference(z):
    return {"images": np.asarray(apply(variables, z))}

  def inputs(batch, seed):
    return {"z": np.random.default_rng(seed).standard_normal(
        (batch, c.latent_dim)).astype(np.float32)}

  return spec, reference, inputs


MODELS = {"simple_cnn": simple_cnn, "resnet18_cifar": resnet18_cifar, "row_lstm": row_lstm,
          "dcgan_generator": dcgan_generator}
