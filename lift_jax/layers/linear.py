"""Dense layers whose kernels carry logical axis names.

One class serves plain linears (`[in, out]` kernels) and head-shaped projections (`[D, N, H]`,
`[N, H, D]`), so attention code can say `einsum("BTD,DNH->BTNH")` instead of reshaping.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _as_tuple(shape: int | Sequence[int]) -> tuple[int, ...]:
  return (shape,) if isinstance(shape, int) else tuple(shape)


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
  """An `nnx.Param` annotated with logical axis names (sharded later, at placement time)."""
  if len(axes) != value.ndim:
    raise ValueError(f"axes {tuple(axes)} do not match a parameter of shape {value.shape}")
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def torch_linear_init(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
  """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for Linear weights and biases."""
  bound = 1.0 / math.sqrt(max(fan_in, 1))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class Dense(nnx.Module):
  """y = x · kernel + bias, contracting the trailing `in_shape` dims of x.

  `axes` names every kernel dim (in dims first, then out dims); the bias takes the out names.
  Parameters live in `param_dtype`; the matmul runs in `dtype`.
  """

  def __init__(
      self,
      in_shape: int | Sequence[int],
      out_shape: int | Sequence[int],
      *,
      axes: Sequence[str | None],
      use_bias: bool = True,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.in_shape = _as_tuple(in_shape)
    self.out_shape = _as_tuple(out_shape)
    self.dtype = dtype
    fan_in = math.prod(self.in_shape)
    k_kernel, k_bias = jax.random.split(rngs.params())
    self.kernel = param(
        torch_linear_init(k_kernel, self.in_shape + self.out_shape, fan_in, param_dtype), axes)
    self.bias = (
        param(torch_linear_init(k_bias, self.out_shape, fan_in, param_dtype),
              tuple(axes)[len(self.in_shape):])
        if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in, n_out = len(self.in_shape), len(self.out_shape)
    contract = LETTERS[x.ndim - n_in: x.ndim]
    out = LETTERS[x.ndim: x.ndim + n_out]
    y = jnp.einsum(f"...{contract},{contract}{out}->...{out}", x.astype(self.dtype),
                   self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y
