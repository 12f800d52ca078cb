"""Static-shape greedy non-maximum suppression (single-class and class-aware).

Semantics (the same as ``tf.image.non_max_suppression`` for well-formed boxes):

* Boxes are ``xyxy`` pixels with ``x1 <= x2`` and ``y1 <= y2``; a box with zero or negative width
  or height has area 0, overlaps nothing (IoU 0) and so neither suppresses nor is suppressed.
  (TF reorders inverted corners; we do not.)
* Candidates are visited by decreasing score; **equal scores: the lower index comes first**.
* A candidate is dropped when its IoU with an already selected box is **strictly greater** than
  ``iou_threshold`` (IoU == threshold is kept, as in TF).
* With ``score_threshold`` only boxes whose score is **strictly greater** are candidates (as TF).
  Without it every box is a candidate; NaN and -inf scores then rank as the lowest finite score
  (TF's default threshold of -inf drops -inf scores instead).
* Output is padded: ``indices [max_output]`` int32 holding the selected indices in selection
  order (decreasing score) followed by -1, and ``num_valid`` int32, the number of real entries.

Shapes are static, so a function compiles once per ``(N, max_output)``; thresholds are traced
values and may change between calls without recompiling. Everything works under ``vmap`` for a
batch of images (``[B, N, 4]`` boxes give ``[B, max_output]`` indices and ``[B]`` counts).

Formulation: a ``lax.while_loop`` that runs once per *selected* box (at most ``max_output``
times, not ``N``): the first maximum of the surviving scores is the next box (hence lower index
on ties); its IoU row against all boxes (``O(N)``) clears the survivors it suppresses. Total work
is ``O(max_output * N)`` with ``O(N)`` memory: no sort (on CPU, sorting N = 1000 scores costs
as much as ~70 loop iterations) and no ``N x N`` IoU matrix.
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def _check_inputs(boxes: Array, scores: Array, max_output: int) -> Tuple[Array, Array]:
  boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must have shape [N, 4] (xyxy); got {tuple(boxes.shape)}. "
                     "Use jax.vmap for a batch of images.")
  if scores.shape != boxes.shape[:1]:
    raise ValueError(f"scores must have shape [N] = [{boxes.shape[0]}]; got {tuple(scores.shape)}.")
  if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 0:
    raise ValueError(f"max_output must be a non-negative Python int; got {max_output!r}.")
  if not jnp.issubdtype(boxes.dtype, jnp.floating):
    boxes = boxes.astype(jnp.float32)
  return boxes, scores


def _iou_row(coords: Array, areas: Array, j: Array) -> Array:
  """IoU of box ``j`` with all boxes -> [N]; 0 where the union is empty.

  ``coords`` is ``[4, N]`` (rows x1, y1, x2, y2: contiguous for vector code) and ``areas`` [N].
  """
  x1, y1, x2, y2 = coords
  w = jnp.maximum(jnp.minimum(x2[j], x2) - jnp.maximum(x1[j], x1), 0.0)
  h = jnp.maximum(jnp.minimum(y2[j], y2) - jnp.maximum(y1[j], y1), 0.0)
  inter = w * h  # [N]
  union = areas[j] + areas - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _first_max(key: Array) -> Array:
  """Index of the first maximum of [N] ``key`` (int32 scalar).

  Same as ``argmax`` but a max plus an int min: plain reductions, together faster on XLA:CPU
  inside the loop than argmax's variadic (value, index) reduction (``benchmarks/RESULTS.md``).
  """
  n = key.shape[0]
  iota = jnp.arange(n, dtype=jnp.int32)
  return jnp.min(jnp.where(key == key.max(), iota, n - 1))


def _greedy_nms(boxes: Array, scores: Array, candidates: Array, classes: Optional[Array],
                iou_threshold, max_output: int) -> Tuple[Array, Array]:
  """Core loop. boxes [N, 4], scores [N], candidates [N] bool, classes [N] int or None."""
  n = boxes.shape[0]
  if n == 0 or max_output == 0:
    return jnp.full((max_output,), -1, jnp.int32), jnp.int32(0)
  dtype = jnp.promote_types(scores.dtype, jnp.float32)
  lowest = jnp.finfo(dtype).min
  # Survivors carry their score (NaN and -inf raised to the lowest finite value), the rest -inf,
  # so the first maximum of `key` is the next box: highest score, lowest index on ties.
  key = jnp.where(jnp.isnan(scores), lowest, jnp.maximum(scores.astype(dtype), lowest))
  key = jnp.where(candidates, key, -jnp.inf)  # [N]
  iou_threshold = jnp.asarray(iou_threshold, boxes.dtype)
  coords = boxes.T  # [4, N]
  areas = (jnp.maximum(coords[2] - coords[0], 0.0) *
           jnp.maximum(coords[3] - coords[1], 0.0))  # [N]
  selected = jnp.full((max_output,), -1, jnp.int32)

  def cond(state):
    count, _, key, j = state
    return (count < max_output) & (key[j] > -jnp.inf)

  def body(state):
    count, selected, key, j = state
    selected = selected.at[count].set(j)
    suppress = _iou_row(coords, areas, j) > iou_threshold  # [N]
    if classes is not None:
      suppress &= classes == classes[j]
    key = jnp.where(suppress | (jnp.arange(n) == j), -jnp.inf, key)
    return count + 1, selected, key, _first_max(key)

  init = (jnp.int32(0), selected, key, _first_max(key))
  count, selected, _, _ = lax.while_loop(cond, body, init)
  return selected, count


def _candidates(scores: Array, score_threshold, valid_mask: Optional[Array]) -> Array:
  keep = jnp.ones(scores.shape, bool)
  if score_threshold is not None:
    keep &= scores > jnp.asarray(score_threshold, scores.dtype)
  if valid_mask is not None:
    valid_mask = jnp.asarray(valid_mask, bool)
    if valid_mask.shape != scores.shape:
      raise ValueError(f"valid_mask must have shape {tuple(scores.shape)} (one flag per box); "
                       f"got {tuple(valid_mask.shape)}.")
    keep &= valid_mask
  return keep


@functools.partial(jax.jit, static_argnames=("max_output",))
def nms(boxes: Array, scores: Array, *, iou_threshold: float, max_output: int,
        score_threshold: Optional[float] = None,
        valid_mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """Greedy single-class non-maximum suppression with static output shape.

  See the module docstring for the exact semantics (strict ``>`` for both thresholds, ties broken
  by lower index first).

  Args:
    boxes: ``[N, 4]`` xyxy boxes in pixels (any consistent unit works: IoU is scale-free).
    scores: ``[N]`` scores; higher is better.
    iou_threshold: drop boxes whose IoU with a selected box is > this, in [0, 1].
    max_output: static Python int, the number of output slots.
    score_threshold: if given, only boxes with score > this are candidates.
    valid_mask: optional ``[N]`` bool, False for padded boxes (never selected).

  Returns:
    ``(indices, num_valid)``: ``indices [max_output]`` int32 into ``boxes``, by decreasing score,
    padded with -1; ``num_valid`` int32 scalar, the number of selected boxes.
  """
  boxes, scores = _check_inputs(boxes, scores, max_output)
  candidates = _candidates(scores, score_threshold, valid_mask)
  return _greedy_nms(boxes, scores, candidates, None, iou_threshold, max_output)


@functools.partial(jax.jit, static_argnames=("max_output",))
def batched_nms(boxes: Array, scores: Array, classes: Array, *, iou_threshold: float,
                max_output: int, score_threshold: Optional[float] = None,
                valid_mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """Class-aware NMS: boxes only suppress boxes of the same class.

  Equivalent to running :func:`nms` separately per class and merging the results by decreasing
  score (ties: lower index first), truncated to ``max_output``. Implemented with per-class
  masking inside one suppression loop (exact, unlike the coordinate-offset trick whose large
  offsets cost float32 precision).

  Args:
    boxes: ``[N, 4]`` xyxy boxes.
    scores: ``[N]`` scores.
    classes: ``[N]`` integer class ids (any values; only equality matters).
    iou_threshold: as in :func:`nms`.
    max_output: static int, total output slots over all classes.
    score_threshold: as in :func:`nms`.
    valid_mask: optional ``[N]`` bool, False for padded boxes.

  Returns:
    ``(indices [max_output] int32 padded with -1, num_valid int32 scalar)``.
  """
  boxes, scores = _check_inputs(boxes, scores, max_output)
  classes = jnp.asarray(classes)
  if classes.shape != scores.shape:
    raise ValueError(f"classes must have shape {tuple(scores.shape)} (one id per box); got "
                     f"{tuple(classes.shape)}.")
  candidates = _candidates(scores, score_threshold, valid_mask)
  return _greedy_nms(boxes, scores, candidates, classes, iou_threshold, max_output)
