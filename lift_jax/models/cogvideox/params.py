"""diffusers `CogVideoXTransformer3DModel` state-dict keys -> NNX paths of `CogVideoXTransformer3D`,
and its checkpoint spec `SPEC` (what `load_transformer` / `convert_checkpoint` use)."""

from __future__ import annotations

from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule, head_bias, heads_in, heads_out, identity, linear
from lift_jax.models.cogvideox.modeling import CogVideoXConfig, CogVideoXTransformer3D


def transformer_rules(cfg: CogVideoXConfig) -> list[Rule]:
  """One row per diffusers key; `{i}` rows fill the stacked block parameters layer by layer."""
  d, n, h = cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim
  c, p, pt = cfg.in_channels, cfg.patch_size, cfg.temporal_patch

  if cfg.patch_size_t is None:  # Conv2d [D, C, p, p] <-> [C, 1, p, p, D]
    patch = lambda w: w.transpose(1, 2, 3, 0).reshape(c, 1, p, p, d)
    patch_inv = lambda k: k.reshape(c, p, p, d).transpose(3, 0, 1, 2)
  else:  # Linear [D, C·pt·p·p], features (c, pt, ph, pw)
    patch = lambda w: w.T.reshape(c, pt, p, p, d)
    patch_inv = lambda k: k.reshape(c * pt * p * p, d).T
  to_heads, to_heads_inv = heads_in(d, n, h)
  from_heads, from_heads_inv = heads_out(n, h, d)
  bias, flat = head_bias(n, h)
  proj_out = lambda w: w.T.reshape(d, cfg.out_channels, pt, p, p)
  proj_out_inv = lambda k: k.reshape(d, -1).T

  rules = [Rule("patch_embed.proj.weight", "patch_proj.kernel", patch, patch_inv),
           Rule("patch_embed.text_proj.weight", "text_proj.kernel", linear),
           Rule("patch_embed.text_proj.bias", "text_proj.bias"),
           Rule("proj_out.weight", "proj_out.kernel", proj_out, proj_out_inv),
           Rule("proj_out.bias", "proj_out.bias",
                lambda b: b.reshape(cfg.out_channels, pt, p, p), flat),
           Rule("norm_out.linear.weight", "norm_out_linear.kernel", linear),
           Rule("norm_out.linear.bias", "norm_out_linear.bias")]
  if cfg.patch_size_t is not None:
    # diffusers' 1.5 patch Linear always has a bias; the SAT original (patch_bias=False) has none.
    rules.append(Rule("patch_embed.proj.bias", "patch_proj.bias", zeros_if_missing=True))
  elif cfg.patch_bias:
    rules.append(Rule("patch_embed.proj.bias", "patch_proj.bias"))
  if cfg.use_learned_positional_embeddings:
    rules.append(Rule("patch_embed.pos_embedding", "pos_embedding"))
  for emb in ("time_embedding",) + (("ofs_embedding",) if cfg.ofs_embed_dim else ()):
    for lin in ("linear_1", "linear_2"):
      rules += [Rule(f"{emb}.{lin}.weight", f"{emb}.{lin}.kernel", linear),
                Rule(f"{emb}.{lin}.bias", f"{emb}.{lin}.bias")]

  blk, dst = "transformer_blocks.{i}", "blocks.layers"
  for norm in ("norm1", "norm2"):
    rules += [Rule(f"{blk}.{norm}.linear.weight", f"{dst}.{norm}.linear.kernel", linear),
              Rule(f"{blk}.{norm}.linear.bias", f"{dst}.{norm}.linear.bias")]
  for proj in ("to_q", "to_k", "to_v"):
    rules += [Rule(f"{blk}.attn1.{proj}.weight", f"{dst}.attn1.{proj}.kernel", to_heads,
                   to_heads_inv)]
    if cfg.attention_bias:
      rules += [Rule(f"{blk}.attn1.{proj}.bias", f"{dst}.attn1.{proj}.bias", bias, flat)]
  rules += [Rule(f"{blk}.attn1.to_out.0.weight", f"{dst}.attn1.to_out.kernel", from_heads,
                 from_heads_inv),
            Rule(f"{blk}.attn1.to_out.0.bias", f"{dst}.attn1.to_out.bias"),
            Rule(f"{blk}.attn1.norm_q.weight", f"{dst}.attn1.norm_q.scale"),
            Rule(f"{blk}.attn1.norm_q.bias", f"{dst}.attn1.norm_q.bias"),
            Rule(f"{blk}.attn1.norm_k.weight", f"{dst}.attn1.norm_k.scale"),
            Rule(f"{blk}.attn1.norm_k.bias", f"{dst}.attn1.norm_k.bias"),
            Rule(f"{blk}.ff.net.0.proj.weight", f"{dst}.ff.up.kernel", linear),
            Rule(f"{blk}.ff.net.0.proj.bias", f"{dst}.ff.up.bias"),
            Rule(f"{blk}.ff.net.2.weight", f"{dst}.ff.down.kernel", linear),
            Rule(f"{blk}.ff.net.2.bias", f"{dst}.ff.down.bias")]
  layer_norms = [("norm_final", "norm_final"), ("norm_out.norm", "norm_out")]
  layer_norms += [(f"{blk}.{nm}.norm", f"{dst}.{nm}.norm") for nm in ("norm1", "norm2")]
  if cfg.norm_elementwise_affine:
    for src, target in layer_norms:
      rules += [Rule(f"{src}.weight", f"{target}.scale", identity),
                Rule(f"{src}.bias", f"{target}.bias", identity)]
  return rules


def diffusers_shapes(cfg: CogVideoXConfig) -> dict[str, tuple[int, ...]]:
  """Every key of a diffusers checkpoint for `cfg` with its torch shape (for synthetic checkpoints)."""
  d, t, p, pt = cfg.inner_dim, cfg.time_embed_dim, cfg.patch_size, cfg.temporal_patch
  shapes: dict[str, tuple[int, ...]] = {
      "patch_embed.text_proj.weight": (d, cfg.text_embed_dim), "patch_embed.text_proj.bias": (d,),
      "time_embedding.linear_1.weight": (t, d), "time_embedding.linear_1.bias": (t,),
      "time_embedding.linear_2.weight": (t, t), "time_embedding.linear_2.bias": (t,),
      "norm_out.linear.weight": (2 * d, t), "norm_out.linear.bias": (2 * d,),
      "proj_out.weight": (cfg.out_channels * pt * p * p, d),
      "proj_out.bias": (cfg.out_channels * pt * p * p,),
  }
  if cfg.patch_size_t is None:
    shapes["patch_embed.proj.weight"] = (d, cfg.in_channels, p, p)
  else:
    shapes["patch_embed.proj.weight"] = (d, cfg.in_channels * pt * p * p)
  if cfg.patch_bias or cfg.patch_size_t is not None:
    shapes["patch_embed.proj.bias"] = (d,)
  if cfg.use_learned_positional_embeddings:
    frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
    tokens = frames * (cfg.sample_height // p) * (cfg.sample_width // p)
    shapes["patch_embed.pos_embedding"] = (1, cfg.max_text_seq_length + tokens, d)
  if cfg.ofs_embed_dim:
    o = cfg.ofs_embed_dim
    shapes.update({"ofs_embedding.linear_1.weight": (o, o), "ofs_embedding.linear_1.bias": (o,),
                   "ofs_embedding.linear_2.weight": (o, o), "ofs_embedding.linear_2.bias": (o,)})
  affine = cfg.norm_elementwise_affine
  for name in ("norm_final", "norm_out.norm") if affine else ():
    shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (d,)
  for i in range(cfg.num_layers):
    b = f"transformer_blocks.{i}"
    for norm in ("norm1", "norm2"):
      shapes[f"{b}.{norm}.linear.weight"] = (6 * d, t)
      shapes[f"{b}.{norm}.linear.bias"] = (6 * d,)
      if affine:
        shapes[f"{b}.{norm}.norm.weight"] = shapes[f"{b}.{norm}.norm.bias"] = (d,)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
      shapes[f"{b}.attn1.{proj}.weight"] = (d, d)
      if cfg.attention_bias or proj == "to_out.0":
        shapes[f"{b}.attn1.{proj}.bias"] = (d,)
    for qk in ("norm_q", "norm_k"):
      shapes[f"{b}.attn1.{qk}.weight"] = shapes[f"{b}.attn1.{qk}.bias"] = (cfg.attention_head_dim,)
    shapes[f"{b}.ff.net.0.proj.weight"], shapes[f"{b}.ff.net.0.proj.bias"] = (4 * d, d), (4 * d,)
    shapes[f"{b}.ff.net.2.weight"], shapes[f"{b}.ff.net.2.bias"] = (d, 4 * d), (d,)
  return shapes


SPEC = ModelSpec(
    kind="cogvideox-transformer", config_class=CogVideoXConfig, model_class=CogVideoXTransformer3D,
    rules=transformer_rules, subfolder="transformer", name="the transformer",
    parse=CogVideoXConfig.from_diffusers_config, dump=CogVideoXConfig.to_diffusers_config,
    weights_name="diffusion_pytorch_model")
