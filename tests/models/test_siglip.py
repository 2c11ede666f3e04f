"""SigLIP vision tower parity with transformers' SiglipVisionModel, loading paths, preprocessing,
sharding."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import SiglipVisionConfig as HFSiglipVisionConfig
from transformers import SiglipVisionModel as HFSiglipVisionModel

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError, write_safetensors
from lift_jax.models import siglip
from tests.reference import perturb_, rel_err

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            image_size=56, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


@nnx.jit(static_argnames="layer")
def _features(model, px, layer):
  return model.features(px, layer=layer)


@nnx.jit
def _last(model, px):
  return model(px)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A perturbed tiny SiglipVisionModel (with its unused head), outputs, and two folder layouts."""
  torch.manual_seed(0)
  model = perturb_(HFSiglipVisionModel(HFSiglipVisionConfig(**TINY)).eval())
  px = torch.randn(3, 3, 56, 56)
  with torch.no_grad():
    out = model(pixel_values=px, output_hidden_states=True)
  root = tmp_path_factory.mktemp("siglip")
  plain = str(root / "plain")  # transformers 5: no `vision_model.` prefix
  model.save_pretrained(plain)
  # VILA (transformers 4.36) layout: a VILA root with vision_tower/, keys under `vision_model.`.
  vila = root / "vila"
  tower = vila / "vision_tower"
  os.makedirs(tower)
  state = {f"vision_model.{k}": v.detach().numpy() for k, v in model.state_dict().items()}
  write_safetensors(str(tower / "model.safetensors"), state)
  (tower / "config.json").write_text(json.dumps(model.config.to_dict()))
  (vila / "config.json").write_text(json.dumps({"llm_cfg": {}, "vision_tower_cfg": {}}))
  return dict(model=model, px=px.numpy(), last=out.last_hidden_state.numpy(),
              hidden=[h.numpy() for h in out.hidden_states], plain=plain, vila=str(vila))


@pytest.fixture(scope="module")
def tower(reference):
  return siglip.load(reference["plain"])


def test_last_hidden_state_and_penultimate_match_transformers(reference, tower):
  px = jnp.asarray(reference["px"])
  err_last = rel_err(_last(tower, px), reference["last"])
  err_m2 = rel_err(_features(tower, px, -2), reference["hidden"][-2])
  print(f"SigLIP last_hidden_state rel err {err_last:.2e}, hidden_states[-2] {err_m2:.2e}")
  assert err_last <= 1e-5 and err_m2 <= 1e-5
  for layer in (0, 1, 3, -1, -4):
    assert rel_err(_features(tower, px, layer), reference["hidden"][layer]) <= 1e-5, layer


def test_vila_prefixed_layout_loads_the_same(reference, tower):
  vila_tower = siglip.load(reference["vila"])  # the VILA root: finds vision_tower/ itself
  px = jnp.asarray(reference["px"])
  np.testing.assert_array_equal(np.asarray(_features(vila_tower, px, -2)),
                                np.asarray(_features(tower, px, -2)))


def test_converted_roundtrip(reference, tower, tmp_path):
  dst = siglip.save(tower, str(tmp_path / "conv"))
  back = siglip.load(dst)
  assert back.config == tower.config
  px = jnp.asarray(reference["px"])
  np.testing.assert_array_equal(np.asarray(_last(back, px)), np.asarray(_last(tower, px)))


def test_preprocessing_matches_the_siglip_processor():
  from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 45, 70, 3), dtype=np.uint8)  # not square: squashed
  ref = SiglipImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3)
  want = ref(images=list(frames), return_tensors="np")["pixel_values"]
  proc = siglip.ImageProcessor.from_config(ref.to_dict())
  got = proc(frames)
  assert got.shape == (2, 3, 56, 56) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_sharded_equals_unsharded(reference, tower):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  sharded = siglip.load(reference["plain"], mesh=mesh)
  assert tuple(sharded.blocks.layers.attn.q.kernel[...].sharding.spec) == (None, "fsdp", "tensor",
                                                                           None)
  px = jnp.asarray(np.concatenate([reference["px"]] * 2)[:4])
  with parallel.use_mesh(mesh):
    out = _features(sharded, jax.device_put(px, jax.NamedSharding(
        mesh, jax.sharding.PartitionSpec(("data", "fsdp")))), -2)
  assert rel_err(out, _features(tower, px, -2)) <= 1e-6


def test_bad_inputs_are_named(reference, tower):
  with pytest.raises(ValueError, match="56x56"):
    tower.features(jnp.zeros((1, 3, 42, 42)), layer=-2)
  with pytest.raises(ValueError, match="layer=7"):
    tower.features(jnp.zeros((1, 3, 56, 56)), layer=7)


def test_missing_key_is_named(reference, tmp_path):
  folder = tmp_path / "broken"
  os.makedirs(folder)
  state = {k: v.detach().numpy() for k, v in reference["model"].state_dict().items()
           if k != "encoder.layers.1.mlp.fc2.bias"}
  write_safetensors(str(folder / "model.safetensors"), state)
  (folder / "config.json").write_text(json.dumps(reference["model"].config.to_dict()))
  with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.mlp\.fc2\.bias"):
    siglip.load(str(folder))
