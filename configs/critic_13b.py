"""Scoring with LiFT-Critic-13B (VILA1.5-13b + LoRA, vicuna_v1), as LiFT's run_critic_13b.py does.

  python tools/score.py --config=configs/critic_13b.py --manifest work/videos/manifest.jsonl \
      --out work/scores.jsonl --critic ckpt/VILA1.5-13b --lora ckpt/LiFT-Critic-13b-lora-v1.5

8 frames a video, the three questions (semantic consistency, fidelity issues, motion issues),
answers sampled at temperature 0.2 (top_k 50, HF's default; no top_p; one beam; at most 512 new
tokens), labels read as LiFT's get_score reads them, mapped Good 0.9 / Normal 0.2 / Bad 0.05,
averaged with equal weights and rounded to 2 digits.
`--mode=logits` scores from P(Good/Normal/Bad) of the first answer token instead (deterministic).
"""

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # sampling seed (generate mode with temperature > 0)
  c.critic = ml_collections.ConfigDict(dict(
      path=placeholder(str),  # VILA1.5-13b folder (config.json, llm/, vision_tower/, mm_projector/)
      lora=placeholder(str),  # LiFT-Critic-13b-lora(-v1.5) adapter folder; None: merged/converted
      template="vicuna_v1",
      dtype="bfloat16",  # compute; "float32" on CPU
      param_dtype=placeholder(str),  # default: dtype
      attention_impl="auto", remat="none"))
  c.mode = "generate"  # generate (the paper's) | logits
  c.batch_videos = 4  # videos per critic call (x3 questions)
  c.read_workers = 2  # threads decoding videos while the critic runs
  c.sampling = ml_collections.ConfigDict(dict(
      temperature=0.2, top_k=50, top_p=1.0, num_beams=1, max_new_tokens=512))
  c.reward = ml_collections.ConfigDict(dict(
      label_scores=ml_collections.ConfigDict(dict(Good=0.9, Normal=0.2, Bad=0.05)),
      weights=ml_collections.ConfigDict(dict(semantic=1.0, fidelity=1.0, motion=1.0)),
      # lift: LiFT's get_score ('Normal' anywhere, else 'Bad' anywhere, else Good) | start: the
      # strict reading (the label must open the answer; others are unparseable). Either way the
      # answers the strict reading rejects are counted in the summary.
      parse_rule="lift",
      unparseable="skip",  # skip: list the video apart | bad: score that dimension as Bad
      round_digits=ml_collections.FieldReference(2, field_type=int),  # LiFT: 2; None: exact
      min_label_mass=0.5))  # logits mode: below this P(Good)+P(Normal)+P(Bad), no label
  # auto: data-parallel replicas when the critic fits one device (13B bf16 ~26 GB), else tensor
  # parallelism (40B), with the memory plan printed first; "mesh": use `mesh` as given.
  c.parallelism = "auto"
  # LiFT's critic-output layout written beside --out (None: not written).
  c.lift_output = "critic_output_13b.json"
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))
  c.compilation_cache = placeholder(str)
  return c
