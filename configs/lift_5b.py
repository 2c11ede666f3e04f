"""LiFT on CogVideoX-5B: the 2B recipe with the 5B noise schedule (SNR shift 1.0).

  python tools/train.py --config=configs/lift_5b.py --workdir runs/lift_5b \
      --config.model.transformer=ckpt/cogvideox-5b/transformer --config.data.dir=work/prepared_5b
"""

from configs import lift_2b


def get_config():
  c = lift_2b.get_config()
  c.schedule = "5b"
  return c
