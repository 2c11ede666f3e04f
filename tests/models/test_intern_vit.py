"""InternViT parity: against a torch reference of the original `InternVisionModel`
(OpenGVLab's trust_remote_code file, written out below) and against transformers'
`InternVLVisionModel` (the same network with other key names); loading paths, position
interpolation, preprocessing defaults, sharding, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn
from transformers import InternVLVisionConfig as HFInternVLVisionConfig
from transformers import InternVLVisionModel as HFInternVLVisionModel

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError, write_safetensors
from lift_jax.models import intern_vit
from tests.reference import perturb_, rel_err

# InternViT-6B-448px-V1-2's structure (RMSNorm, QK-norm, no qkv bias, layer scale, exact GELU),
# tiny: 4x4 patches + CLS, 4 heads of 8.
TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_channels=3, image_size=56, patch_size=14, hidden_act="gelu", norm_type="rms_norm",
            layer_norm_eps=1e-6, qk_normalization=True, qkv_bias=False, initializer_factor=0.1,
            model_type="intern_vit_6b", architectures=["InternVisionModel"])
# InternViT-300M's structure: LayerNorm, qkv bias, no QK-norm (and another eps, to see it used).
TINY_LN = dict(TINY, norm_type="layer_norm", qk_normalization=False, qkv_bias=True,
               layer_norm_eps=1e-5)


# ----------------------------------------------------------------------------- torch reference


class Cfg:
  def __init__(self, d):
    self.__dict__.update(d)


class InternRMSNorm(nn.Module):
  def __init__(self, hidden_size, eps=1e-6):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(hidden_size))
    self.variance_epsilon = eps

  def forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


NORM2FN = {"rms_norm": InternRMSNorm, "layer_norm": nn.LayerNorm}


class InternVisionEmbeddings(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.embed_dim = config.hidden_size
    self.image_size = config.image_size
    self.patch_size = config.patch_size
    self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
    self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size,
                                     stride=self.patch_size)
    self.num_patches = (self.image_size // self.patch_size) ** 2
    self.position_embedding = nn.Parameter(torch.randn(1, self.num_patches + 1, self.embed_dim))

  def _get_pos_embed(self, pos_embed, H, W):
    target_dtype = pos_embed.dtype
    pos_embed = pos_embed.float().reshape(
        1, self.image_size // self.patch_size, self.image_size // self.patch_size, -1).permute(0, 3, 1, 2)
    pos_embed = F.interpolate(pos_embed, size=(H, W), mode="bicubic", align_corners=False)
    return pos_embed.reshape(1, -1, H * W).permute(0, 2, 1).to(target_dtype)

  def forward(self, pixel_values):
    target_dtype = self.patch_embedding.weight.dtype
    patch_embeds = self.patch_embedding(pixel_values)
    batch_size, _, height, width = patch_embeds.shape
    patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
    class_embeds = self.class_embedding.expand(batch_size, 1, -1).to(target_dtype)
    embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
    position_embedding = torch.cat([
        self.position_embedding[:, :1, :],
        self._get_pos_embed(self.position_embedding[:, 1:, :], height, width)], dim=1)
    return embeddings + position_embedding.to(target_dtype)


class InternAttention(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.embed_dim = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.head_dim = self.embed_dim // self.num_heads
    self.scale = self.head_dim ** -0.5
    self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
    self.qk_normalization = config.qk_normalization
    if self.qk_normalization:
      self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
      self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
    self.proj = nn.Linear(self.embed_dim, self.embed_dim)

  def forward(self, x):
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if self.qk_normalization:
      B_, H_, N_, D_ = q.shape
      q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
      k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return self.proj(x)


class InternMLP(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.act = nn.GELU()
    self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
    self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
  def __init__(self, config):
    super().__init__()
    d = config.hidden_size
    self.attn = InternAttention(config)
    self.mlp = InternMLP(config)
    self.norm1 = NORM2FN[config.norm_type](d, eps=config.layer_norm_eps)
    self.norm2 = NORM2FN[config.norm_type](d, eps=config.layer_norm_eps)
    self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(d))
    self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(d))

  def forward(self, hidden_states):
    hidden_states = hidden_states + self.attn(self.norm1(hidden_states).to(hidden_states.dtype)) * self.ls1
    return hidden_states + self.mlp(self.norm2(hidden_states).to(hidden_states.dtype)) * self.ls2


class InternVisionEncoder(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.layers = nn.ModuleList([InternVisionEncoderLayer(config)
                                 for _ in range(config.num_hidden_layers)])


class InternVisionModel(nn.Module):
  """The original `InternVisionModel`: `forward` returns `hidden_states` (embeddings, then each
  block's output); `last_hidden_state` is the last of them, with no final norm."""

  def __init__(self, config: dict):
    super().__init__()
    self.config = Cfg(config)
    self.embeddings = InternVisionEmbeddings(self.config)
    self.encoder = InternVisionEncoder(self.config)

  def forward(self, pixel_values):
    hidden_states = [self.embeddings(pixel_values)]
    for layer in self.encoder.layers:
      hidden_states.append(layer(hidden_states[-1]))
    return hidden_states


def make_reference(config: dict, seed: int = 0) -> InternVisionModel:
  torch.manual_seed(seed)
  return perturb_(InternVisionModel(config).eval(), seed=seed)


def save_original(model: InternVisionModel, folder, *, prefix: str = "") -> str:
  """The folder VILA writes in `vision_tower/` (original key names), optionally prefixed."""
  os.makedirs(folder, exist_ok=True)
  write_safetensors(os.path.join(folder, "model.safetensors"),
                    {prefix + k: v.detach().numpy() for k, v in model.state_dict().items()})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(model.config.__dict__, f)
  return str(folder)


def to_transformers(model: InternVisionModel) -> HFInternVLVisionModel:
  """The same weights in transformers' `InternVLVisionModel` (split qkv, other names)."""
  c = model.config
  hf = HFInternVLVisionModel(HFInternVLVisionConfig(
      hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
      image_size=c.image_size, patch_size=c.patch_size, hidden_act=c.hidden_act,
      norm_type=c.norm_type, layer_norm_eps=c.layer_norm_eps, use_qk_norm=c.qk_normalization,
      attention_bias=c.qkv_bias, use_mean_pooling=True)).eval()
  src = model.state_dict()
  d = c.hidden_size
  out = {"embeddings.cls_token": src["embeddings.class_embedding"],
         "embeddings.position_embeddings": src["embeddings.position_embedding"],
         "embeddings.patch_embeddings.projection.weight": src["embeddings.patch_embedding.weight"],
         "embeddings.patch_embeddings.projection.bias": src["embeddings.patch_embedding.bias"]}
  for i in range(c.num_hidden_layers):
    a, b = f"encoder.layers.{i}.", f"encoder.layer.{i}."
    for j, name in enumerate("qkv"):
      out[f"{b}attention.{name}_proj.weight"] = src[f"{a}attn.qkv.weight"][j * d:(j + 1) * d]
      if c.qkv_bias:
        out[f"{b}attention.{name}_proj.bias"] = src[f"{a}attn.qkv.bias"][j * d:(j + 1) * d]
    for ours, theirs in (("attn.proj", "attention.projection_layer"), ("norm1", "layernorm_before"),
                         ("norm2", "layernorm_after"), ("attn.q_norm", "attention.q_norm"),
                         ("attn.k_norm", "attention.k_norm"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):
      for p in ("weight", "bias"):
        if f"{a}{ours}.{p}" in src:
          out[f"{b}{theirs}.{p}"] = src[f"{a}{ours}.{p}"]
    out[f"{b}lambda_1"], out[f"{b}lambda_2"] = src[f"{a}ls1"], src[f"{a}ls2"]
  hf.load_state_dict(out, strict=True)
  return hf


# ----------------------------------------------------------------------------- fixtures


@nnx.jit(static_argnames="layer")
def _features(model, px, layer):
  return model.features(px, layer=layer)


@nnx.jit
def _last(model, px):
  return model(px)


def _run(model, px):
  with torch.no_grad():
    return [h.numpy() for h in model(torch.from_numpy(px))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  model = make_reference(TINY)
  rng = np.random.default_rng(0)
  px = rng.standard_normal((2, 3, 56, 56)).astype(np.float32)
  root = tmp_path_factory.mktemp("intern_vit")
  original = save_original(model, root / "original")
  hf = to_transformers(model)
  hf_folder = str(root / "transformers")
  hf.save_pretrained(hf_folder)
  # A VILA root: vision_tower/ in the original naming, here under InternVL chat's prefix.
  vila = root / "vila"
  save_original(model, vila / "vision_tower", prefix="vision_model.")
  (vila / "config.json").write_text(json.dumps({"llm_cfg": {}, "vision_tower_cfg": {}}))
  return dict(model=model, hf=hf, px=px, hidden=_run(model, px), original=original,
              transformers=hf_folder, vila=str(vila), root=root)


@pytest.fixture(scope="module")
def tower(reference):
  return intern_vit.load(reference["original"])


# ----------------------------------------------------------------------------- parity


def test_hidden_states_match_the_original(reference, tower):
  px = jnp.asarray(reference["px"])
  want = reference["hidden"]
  err_last = rel_err(_last(tower, px), want[-1])
  err_m2 = rel_err(_features(tower, px, -2), want[-2])
  print(f"InternViT (6B structure) vs original torch: last hidden state rel err {err_last:.2e}, "
        f"hidden_states[-2] {err_m2:.2e}")
  assert err_last <= 1e-5 and err_m2 <= 1e-5
  for layer in (0, 1, 3, -4):
    assert rel_err(_features(tower, px, layer), want[layer]) <= 1e-5, layer


def test_matches_transformers_internvl_vision_model(reference, tower):
  """transformers' InternVLVisionModel with the converted weights is the same network (so the
  reference above is right), and its folder loads to the same tower."""
  px = reference["px"]
  with torch.no_grad():
    out = reference["hf"](torch.from_numpy(px), output_hidden_states=True)
  hf_hidden = [h.numpy() for h in out.hidden_states]
  assert len(hf_hidden) == len(reference["hidden"])
  for theirs, ours in zip(hf_hidden, reference["hidden"]):
    assert rel_err(theirs, ours) <= 1e-5
  hf_tower = intern_vit.load(reference["transformers"])
  assert hf_tower.config.qk_eps == 1e-6 and hf_tower.config.qk_normalization
  err_last = rel_err(_last(hf_tower, jnp.asarray(px)), out.last_hidden_state.numpy())
  err_m2 = rel_err(_features(hf_tower, jnp.asarray(px), -2), hf_hidden[-2])
  print(f"InternViT vs transformers InternVLVisionModel: last {err_last:.2e}, [-2] {err_m2:.2e}")
  assert err_last <= 1e-5 and err_m2 <= 1e-5


def test_layer_norm_variant_with_qkv_bias(reference, tmp_path):
  model = make_reference(TINY_LN, seed=1)
  tower = intern_vit.load(save_original(model, tmp_path / "ln"))
  assert tower.config.norm_type == "layer_norm" and tower.blocks.layers.attn.q_norm is None
  want = _run(model, reference["px"])
  err = rel_err(_last(tower, jnp.asarray(reference["px"])), want[-1])
  print(f"InternViT (LayerNorm, qkv bias, no QK-norm) rel err {err:.2e}")
  assert err <= 1e-5


@pytest.mark.parametrize("hw", [(70, 84), (42, 42)])
def test_positions_are_interpolated_like_the_original(reference, tower, hw):
  """Another image size: the 4x4 position grid is resized bicubically (up, and down), as torch."""
  rng = np.random.default_rng(1)
  px = rng.standard_normal((2, 3) + hw).astype(np.float32)
  want = _run(reference["model"], px)
  err = rel_err(_last(tower, jnp.asarray(px)), want[-1])
  err0 = rel_err(_features(tower, jnp.asarray(px), 0), want[0])
  print(f"InternViT at {hw[0]}x{hw[1]} (interpolated positions): embeddings {err0:.2e}, "
        f"last {err:.2e}")
  assert err0 <= 1e-6 and err <= 1e-5
  with torch.no_grad():
    hf = reference["hf"](torch.from_numpy(px)).last_hidden_state.numpy()
  assert rel_err(hf, want[-1]) <= 1e-5


def test_bicubic_matrix_is_torch_interpolate():
  x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
  for out in (3, 7, 11, 16):
    want = F.interpolate(x, size=(out, out), mode="bicubic", align_corners=False)[0, 0].numpy()
    w = intern_vit.bicubic_matrix(out, 7)
    np.testing.assert_allclose(w @ x[0, 0].numpy() @ w.T, want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- loading


def test_vila_root_with_prefix_loads_the_same(reference, tower):
  vila_tower = intern_vit.load(reference["vila"])
  px = jnp.asarray(reference["px"])
  np.testing.assert_array_equal(np.asarray(_last(vila_tower, px)), np.asarray(_last(tower, px)))


def test_converted_roundtrip(reference, tower, tmp_path):
  dst = intern_vit.save(tower, str(tmp_path / "conv"))
  back = intern_vit.load(dst)
  assert back.config == tower.config
  px = jnp.asarray(reference["px"])
  np.testing.assert_array_equal(np.asarray(_last(back, px)), np.asarray(_last(tower, px)))


@pytest.mark.parametrize("config", ["TINY", "TINY_LN"])
def test_table_inverts_to_the_original_state_dict(config, tmp_path):
  from lift_jax.checkpoint.tables import export_tensors
  model = make_reference(globals()[config], seed=2)
  tower = intern_vit.load(save_original(model, tmp_path / config))
  got = dict(export_tensors(tower, intern_vit.vision_rules(tower.config)))
  want = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_config_presets_and_hf_fields():
  cfg = intern_vit.InternVisionConfig.internvit_6b_448px_v1_2()
  assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.num_hidden_layers,
          cfg.num_patches) == (3200, 25, 128, 45, 1024)
  assert cfg.norm_type == "rms_norm" and cfg.qk_normalization and not cfg.qkv_bias
  assert intern_vit.InternVisionConfig.from_hf_config(cfg.to_hf_config()) == cfg
  with pytest.raises(ValueError, match="use_mean_pooling"):
    intern_vit.InternVisionConfig.from_hf_config(
        dict(model_type="internvl_vision", hidden_size=8, intermediate_size=8, num_hidden_layers=1,
             num_attention_heads=2, use_mean_pooling=False))


def test_preprocessing_defaults_are_imagenet(tmp_path):
  """VILA's InternVisionPreprocessor saves no mean/std: ImageNet's apply, at the tower size."""
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(
      {"image_processor_type": "InternVisionPreprocessor"}))
  proc = intern_vit.image_processor(str(tmp_path), image_size=56)
  assert (proc.height, proc.width) == (56, 56)
  frames = np.random.default_rng(0).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
  from PIL import Image
  want = np.stack([np.asarray(Image.fromarray(f).resize((56, 56), Image.BICUBIC)) for f in frames])
  want = ((want / 255.0 - np.array(intern_vit.IMAGENET_MEAN)) / np.array(intern_vit.IMAGENET_STD))
  np.testing.assert_allclose(proc(frames), want.transpose(0, 3, 1, 2), atol=1e-5, rtol=0)
  assert intern_vit.image_processor(str(tmp_path / "none")).height == 448


def test_sharded_equals_unsharded(reference, tower):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  sharded = intern_vit.load(reference["original"], mesh=mesh)
  assert tuple(sharded.blocks.layers.attn.qkv.kernel[...].sharding.spec) == (
      None, "fsdp", None, None, None)  # 25 heads: the head axis stays whole
  assert tuple(sharded.blocks.layers.mlp.up.kernel[...].sharding.spec) == (None, "fsdp", "tensor")
  px = jnp.asarray(np.concatenate([reference["px"]] * 2))
  with parallel.use_mesh(mesh):
    out = _last(sharded, jax.device_put(px, jax.NamedSharding(
        mesh, jax.sharding.PartitionSpec(("data", "fsdp")))))
  assert rel_err(out, _last(tower, px)) <= 1e-6


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_named(tower):
  with pytest.raises(ValueError, match="layer=5"):
    tower.features(jnp.zeros((1, 3, 56, 56)), layer=5)
  with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
    tower.features(jnp.zeros((1, 56, 56, 3)), layer=-1)


def test_missing_key_is_named(reference, tmp_path):
  folder = tmp_path / "broken"
  os.makedirs(folder)
  state = {k: v.detach().numpy() for k, v in reference["model"].state_dict().items()
           if k != "encoder.layers.1.attn.k_norm.weight"}
  write_safetensors(str(folder / "model.safetensors"), state)
  (folder / "config.json").write_text(json.dumps(TINY))
  with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.attn\.k_norm\.weight"):
    intern_vit.load(str(folder))
