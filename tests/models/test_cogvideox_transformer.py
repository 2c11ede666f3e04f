"""CogVideoX transformer: parity with diffusers (all three families), conversion, sharding, gradients."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from flax import nnx

from lift_jax import parallel
from lift_jax.checkpoint import CheckpointError, tables
from lift_jax.models import cogvideox
from lift_jax.models.cogvideox.params import transformer_rules
from tests.reference import perturb_, rel_err, save_sharded

TINY = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=24,
            time_embed_dim=32, max_text_seq_length=7, sample_height=8, sample_width=12,
            sample_frames=9)
FAMILIES = {
    "2b": TINY,
    "5b": {**TINY, "use_rotary_positional_embeddings": True},
    "1.5": {**TINY, "use_rotary_positional_embeddings": True, "patch_size_t": 2,
            "patch_bias": False, "sample_height": 12, "sample_width": 16},
    "5b-i2v": {**TINY, "use_rotary_positional_embeddings": True,
               "use_learned_positional_embeddings": True, "in_channels": 32},
    "1.5-i2v": {**TINY, "use_rotary_positional_embeddings": True, "patch_size_t": 2,
                "patch_bias": False, "ofs_embed_dim": 32, "in_channels": 32},
}
# (frames, height, width) latent sizes per family: non-square, odd token grids, off-default sizes.
SIZES = {
    "2b": [(3, 8, 12), (2, 10, 6), (1, 6, 14)],
    "5b": [(3, 8, 12), (2, 10, 6), (4, 6, 14)],
    "1.5": [(4, 6, 10), (2, 12, 16)],
    "5b-i2v": [(3, 8, 12), (2, 8, 12)],
    "1.5-i2v": [(2, 8, 12)],
}


def reference_rope(kw, frames, height, width):
  """The RoPE tables diffusers' pipelines compute and pass into the transformer."""
  if not kw.get("use_rotary_positional_embeddings"):
    return None
  p, pt = kw.get("patch_size", 2), kw.get("patch_size_t")
  gh, gw = height // p, width // p
  if pt is None:
    crops = get_resize_crop_region_for_grid((gh, gw), kw["sample_width"] // p, kw["sample_height"] // p)
    return get_3d_rotary_pos_embed(kw["attention_head_dim"], crops, (gh, gw), frames)
  return get_3d_rotary_pos_embed(kw["attention_head_dim"], None, (gh, gw), (frames + pt - 1) // pt,
                                 grid_type="slice",
                                 max_size=(kw["sample_height"] // p, kw["sample_width"] // p))


def make_inputs(kw, frames, height, width, batch=2, seed=0):
  gen = torch.Generator().manual_seed(seed)
  latents = torch.randn(batch, frames, kw.get("in_channels", 16), height, width, generator=gen)
  text = torch.randn(batch, kw["max_text_seq_length"], kw["text_embed_dim"], generator=gen)
  timesteps = torch.tensor([3, 917, 500, 0][:batch])
  ofs = torch.full((batch,), 2.0) if kw.get("ofs_embed_dim") else None
  return latents, text, timesteps, ofs


def run_reference(ref, kw, latents, text, timesteps, ofs):
  rope = reference_rope(kw, latents.shape[1], latents.shape[3], latents.shape[4])
  with torch.no_grad():
    return ref(latents, text, timesteps, image_rotary_emb=rope, ofs=ofs).sample


def run_ours(model, latents, text, timesteps, ofs):
  to_j = lambda t: None if t is None else jnp.asarray(t.numpy())
  return model(to_j(latents), to_j(text), to_j(timesteps), ofs=to_j(ofs))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
  name = request.param
  kw = FAMILIES[name]
  torch.manual_seed(0)
  ref = perturb_(CogVideoXTransformer3DModel(**kw).eval(), seed=1)
  folder = str(tmp_path_factory.mktemp(f"cogvideox-{name}") / "transformer")
  save_sharded(ref, folder, dict(ref.config), shards=3)
  return name, kw, ref, folder


def test_parity_with_diffusers_folder_and_converted(family, tmp_path):
  name, kw, ref, folder = family
  from_folder = cogvideox.load_transformer(folder)
  converted = str(tmp_path / "converted")
  cogvideox.save_transformer(from_folder, converted)
  from_converted = cogvideox.load_transformer(converted)
  for frames, height, width in SIZES[name]:
    inputs = make_inputs(kw, frames, height, width)
    expected = run_reference(ref, kw, *inputs)
    for model in (from_folder, from_converted):
      err = rel_err(run_ours(model, *inputs), expected)
      assert err <= 1e-5, (name, frames, height, width, err)


def test_bf16_close_to_fp32_reference(family):
  name, kw, ref, folder = family
  model = cogvideox.load_transformer(folder, dtype="bfloat16")
  frames, height, width = SIZES[name][0]
  inputs = make_inputs(kw, frames, height, width)
  out = run_ours(model, *inputs)
  assert out.dtype == jnp.bfloat16
  err = rel_err(out.astype(jnp.float32), run_reference(ref, kw, *inputs))
  print(f"\n[bf16 vs fp32 reference] {name}: relative error {err:.2e}")
  assert err <= 2e-2


def test_sharded_forward_equals_unsharded(tmp_path):
  kw = FAMILIES["5b"]
  ref = perturb_(CogVideoXTransformer3DModel(**kw).eval(), seed=2)
  folder = save_sharded(ref, str(tmp_path / "tr"), dict(ref.config))
  inputs = make_inputs(kw, 2, 8, 12, batch=4)
  expected = run_ours(cogvideox.load_transformer(folder), *inputs)
  mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  model = cogvideox.load_transformer(folder, mesh=mesh)
  kernel = model.blocks.layers.attn1.to_q.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  with parallel.use_mesh(mesh):
    latents = jax.device_put(jnp.asarray(inputs[0].numpy()),
                             jax.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
    out = nnx.jit(lambda m, x, t, s: m(x, t, s))(
        model, latents, jnp.asarray(inputs[1].numpy()), jnp.asarray(inputs[2].numpy()))
  assert rel_err(out, np.asarray(expected)) <= 1e-6


def test_gradients_match_torch(tmp_path):
  kw = FAMILIES["5b"]
  ref = perturb_(CogVideoXTransformer3DModel(**kw), seed=3)
  folder = save_sharded(ref, str(tmp_path / "tr"), dict(ref.config))
  model = cogvideox.load_transformer(folder)
  latents, text, timesteps, _ = make_inputs(kw, 2, 8, 12)
  weight = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
  rope = reference_rope(kw, 2, 8, 12)
  (ref(latents, text, timesteps, image_rotary_emb=rope).sample * weight).sum().backward()
  ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}

  def loss(m):
    out = m(jnp.asarray(latents.numpy()), jnp.asarray(text.numpy()), jnp.asarray(timesteps.numpy()))
    return jnp.sum(out * jnp.asarray(weight.numpy()))

  grads = tables.flat_variables(nnx.grad(loss)(model))
  cfg = model.config
  worst = 0.0
  for rule in transformer_rules(cfg):
    ours = np.asarray(grads[rule.dst][...])
    if rule.stacked:
      for i in range(cfg.num_layers):
        theirs = np.asarray(rule.transform(ref_grads[rule.src.format(i=i)]))
        worst = max(worst, rel_err(ours[i], theirs))
    else:
      worst = max(worst, rel_err(ours, np.asarray(rule.transform(ref_grads[rule.src]))))
  assert worst <= 1e-4, worst


def test_remat_does_not_change_numbers(tmp_path):
  kw = FAMILIES["2b"]
  ref = perturb_(CogVideoXTransformer3DModel(**kw), seed=4)
  folder = save_sharded(ref, str(tmp_path / "tr"), dict(ref.config))
  latents, text, timesteps, _ = make_inputs(kw, 2, 8, 12)
  args = [jnp.asarray(t.numpy()) for t in (latents, text, timesteps)]
  outs = []
  for remat in ("none", "full"):
    model = cogvideox.load_transformer(folder, remat=remat)
    outs.append(nnx.grad(lambda m: jnp.sum(m(*args) ** 2))(model).blocks.layers.ff.up.kernel[...])
  assert rel_err(outs[1], outs[0]) <= 1e-5


def test_config_presets_match_published_sizes():
  for preset, params in ((cogvideox.CogVideoXConfig.cogvideox_2b(), 1.694e9),
                         (cogvideox.CogVideoXConfig.cogvideox_5b(), 5.570e9)):
    model = nnx.eval_shape(lambda: cogvideox.CogVideoXTransformer3D(preset, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert abs(n - params) / params < 1e-3, (preset, n)


def test_bad_input_shapes_are_named(tmp_path):
  kw = FAMILIES["2b"]
  ref = CogVideoXTransformer3DModel(**kw)
  model = cogvideox.load_transformer(save_sharded(ref, str(tmp_path / "tr"), dict(ref.config)))
  text = jnp.zeros((1, 7, 24))
  with pytest.raises(ValueError, match="channels"):
    model(jnp.zeros((1, 2, 8, 8, 12)), text, jnp.zeros((1,)))
  with pytest.raises(ValueError, match="multiples of patch_size"):
    model(jnp.zeros((1, 2, 16, 7, 12)), text, jnp.zeros((1,)))


# ----------------------------------------------------------------------------- bad checkpoints


@pytest.fixture()
def tiny_folder(tmp_path):
  ref = CogVideoXTransformer3DModel(**FAMILIES["2b"])
  return ref, save_sharded(ref, str(tmp_path / "tr"), dict(ref.config), shards=2)


def _resave(ref, folder, state):
  shutil.rmtree(folder)
  module = torch.nn.Module()
  module.state_dict = lambda: state
  save_sharded(module, folder, dict(ref.config))


def test_missing_keys_are_all_named(tiny_folder):
  ref, folder = tiny_folder
  state = dict(ref.state_dict())
  del state["proj_out.bias"], state["transformer_blocks.1.attn1.to_k.weight"]
  _resave(ref, folder, state)
  with pytest.raises(CheckpointError, match="missing keys") as err:
    cogvideox.load_transformer(folder)
  assert "proj_out.bias" in str(err.value)
  assert "transformer_blocks.1.attn1.to_k.weight" in str(err.value)


def test_unexpected_key_is_named(tiny_folder):
  ref, folder = tiny_folder
  state = dict(ref.state_dict(), **{"transformer_blocks.0.extra.weight": torch.zeros(3)})
  _resave(ref, folder, state)
  with pytest.raises(CheckpointError, match=r"unexpected keys \(1\):\n  transformer_blocks.0.extra"):
    cogvideox.load_transformer(folder)


def test_wrong_shape_is_named(tiny_folder):
  ref, folder = tiny_folder
  state = dict(ref.state_dict())
  state["transformer_blocks.0.ff.net.2.weight"] = torch.zeros(32, 100)
  _resave(ref, folder, state)
  with pytest.raises(CheckpointError, match=r"transformer_blocks.0.ff.net.2.weight: checkpoint shape"):
    cogvideox.load_transformer(folder)


def test_truncated_safetensors_is_named(tiny_folder):
  _, folder = tiny_folder
  shard = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))[1]
  path = os.path.join(folder, shard)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)
  with pytest.raises(CheckpointError, match=f"{shard}: truncated file"):
    cogvideox.load_transformer(folder)


def test_missing_config_is_named(tiny_folder):
  _, folder = tiny_folder
  os.remove(os.path.join(folder, "config.json"))
  with pytest.raises(CheckpointError, match="config.json: missing"):
    cogvideox.load_transformer(folder)


def test_failed_save_leaves_no_partial_output(tiny_folder, tmp_path, monkeypatch):
  _, folder = tiny_folder
  model = cogvideox.load_transformer(folder)
  import orbax.checkpoint as ocp

  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(ocp.Checkpointer, "save", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    cogvideox.save_transformer(model, str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path)) == ["tr"]


def test_export_to_diffusers_round_trip(tmp_path):
  kw = FAMILIES["1.5"]
  ref = perturb_(CogVideoXTransformer3DModel(**kw).eval(), seed=6)
  model = cogvideox.load_transformer(save_sharded(ref, str(tmp_path / "tr"), dict(ref.config)))
  exported = cogvideox.export_diffusers(model, str(tmp_path / "exported"), max_shard_bytes=40_000)
  assert os.path.exists(os.path.join(exported, "diffusion_pytorch_model.safetensors.index.json"))
  back = CogVideoXTransformer3DModel.from_pretrained(exported).eval()
  inputs = make_inputs(kw, 4, 6, 10)
  assert rel_err(run_ours(model, *inputs), run_reference(back, kw, *inputs)) <= 1e-5
  reimported = tables.flat_variables(nnx.state(cogvideox.load_transformer(exported)))
  for path, var in tables.flat_variables(nnx.state(model)).items():
    np.testing.assert_array_equal(var[...], reimported[path][...], err_msg=path)
