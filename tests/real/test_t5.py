"""T5-v1.1-XXL widths (CogVideoX's text encoder, depth cut to 2 so the second layer reuses the
first one's relative position bias), stored bf16 as `save_pretrained` writes it, loaded by
`t5.load_encoder` and through the converter, against transformers re-reading it in fp32."""

import gc
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel

from lift_jax.models import t5
from lift_jax.models.t5.tokenizer import MAX_LENGTH
from tests.real import hub
from tests.reference import rel_err


@nnx.jit(graph_updates=False)  # read-only: graph-mode nnx.jit would output a copy of the weights
def _forward(model, ids):
  return model(ids)


@pytest.mark.slow
def test_t5_xxl_widths(tmp_path):
  start = time.perf_counter()
  stages = hub.StagePeaks()
  torch.manual_seed(0)
  model = hub.perturb_constants_(T5EncoderModel(HFT5Config(**dict(hub.T5_XXL, num_layers=2))))
  folder = str(tmp_path / "text_encoder")
  model.to(torch.bfloat16).save_pretrained(folder)
  del model
  gc.collect()
  stages.mark("write")
  # CogVideoX's prompt layout: 226 ids, a </s> (1) after the text, then <pad> (0); no mask.
  ids = torch.randint(2, hub.T5_XXL["vocab_size"], (1, MAX_LENGTH),
                      generator=torch.Generator().manual_seed(1))
  ids[0, 57] = 1
  ids[0, 58:] = 0
  ref = T5EncoderModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
  with torch.no_grad():
    want = ref(input_ids=ids).last_hidden_state.numpy()
  del ref
  gc.collect()
  stages.mark("reference")
  errs = {}
  for how in ("folder", "converted"):
    path = (folder if how == "folder"
            else hub.converted("t5-encoder", folder, str(tmp_path / "conv")))
    enc = t5.load_encoder(path)
    assert (enc.config.d_model, enc.config.num_heads, enc.config.d_ff) == (4096, 64, 10240)
    errs[how] = rel_err(_forward(enc, jnp.asarray(ids.numpy())), want)
    del enc
    gc.collect()
    stages.mark("load_encoder" if how == "folder" else "converter + load")
  hub.report("T5-v1.1-XXL widths (2 layers, 226 tokens)", start, stages, **errs)
  assert np.isfinite(want).all() and max(errs.values()) <= 1e-5, errs
