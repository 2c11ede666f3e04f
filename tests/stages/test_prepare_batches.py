"""prepare encodes a batch of clips at once, split over the process's devices (8 fake CPU devices
here, set by tests/conftest.py): the prepared examples equal those of one clip at a time on one
device."""

import jax
import numpy as np

from lift_jax.data import generated
from lift_jax.stages import prepare
from tests.data.test_prepare_data import tiny_models, work  # noqa: F401  (fixtures)


def test_batched_encode_over_local_devices_equals_one_at_a_time(work, tiny_models):  # noqa: F811
  assert jax.local_device_count() == 8
  cfg = prepare.default_config()
  cfg.num_frames, cfg.height, cfg.width = 9, 16, 24
  cfg.vae_tiling = False
  cfg.compilation_cache = ""
  models = dict(vae=str(tiny_models / "vae"), t5=str(tiny_models / "t5"),
                tokenizer=str(tiny_models / "tokenizer"))
  args = (str(work / "videos" / "manifest.jsonl"), str(work / "scores.jsonl"))
  out = {}
  for name, devices, batch in (("one", jax.local_devices()[:1], 1),
                               ("batched", jax.local_devices(), 0)):
    cfg.video_batch = batch
    enc = prepare.load_encoders(models["vae"], models["t5"], models["tokenizer"], dtype="float32",
                                text_batch=cfg.text_batch, vae_tiling=False, devices=devices)
    calls = []
    encode_video = enc.encode_video
    enc.encode_video = lambda x, f=encode_video, c=calls: c.append(x.shape[0]) or f(x)
    out[name] = str(work / name)
    prepare.run(cfg, *args, out[name], real=str(work / "real.jsonl"), progress=False,
                encoders=enc)
    out[name + "_calls"] = calls
  assert out["one_calls"] == [1, 1, 1, 1]
  assert out["batched_calls"] == [3, 1]  # the 3 readable generated clips, then the real one
  one, batched = generated.open_dataset(out["one"]), generated.open_dataset(out["batched"])
  worst = 0.0
  for split in ("synthetic", "real"):
    assert len(one[split]) == len(batched[split]) > 0
    for i in range(len(one[split])):
      a, b = one[split][i], batched[split][i]
      assert a["path"] == b["path"]
      for key in ("latent_mean", "latent_logvar", "text_embeds"):
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=f"{split} {key}")
        worst = max(worst, float(np.max(np.abs(b[key].astype(np.float64) - a[key]))))
  print(f"batched vs one at a time: max abs difference {worst:.3g}")
