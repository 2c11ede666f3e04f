r"""The generate stage: prompts.txt -> DIR/videos/NNNNN.mp4 + DIR/manifest.jsonl with CogVideoX.

  lift-jax generate --config=configs/cogvideox_2b.py --prompts prompts.txt --out work \
      --model ckpt/CogVideoX-2b [--num_videos_per_prompt=4] [--config.batch_size=8] \
      [--config.sampling.num_steps=50] [--config.model.transformer=runs/lift_2b/export]

The prompts file has one prompt a line; blank lines and lines starting with '#' are skipped.
Video k (prompt i, copy j, k = i * num_videos_per_prompt + j) is videos/{k:05d}.mp4 made from seed
config.seed + k, so a run is reproducible and one video does not depend on its batch. Each
manifest row holds prompt, seed, path (relative to DIR), the video size, fps, the sampler settings
and the model paths. Rows are appended a batch at a time after their videos are written, so a
killed run started again with the same command generates only what is missing (--overwrite starts
over). A missing prompts file or checkpoint is reported before any model is loaded.

Several processes (a pod, a GPU cluster) split the videos by global index (video k goes to process
k % P), each samples on its own devices and appends to its own manifest-0000p-of-0000P.jsonl; after
a barrier process 0 merges them into manifest.jsonl. Seeds are by global index, so the videos do not
depend on the number of processes, and each process resumes its own share.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent import futures

import jax
import numpy as np
from absl import flags
from tqdm import tqdm

from lift_jax import files, parallel, runtime
from lift_jax.data import records, video as video_lib
from lift_jax.diffusion import pipeline as pipeline_lib
from lift_jax.diffusion.samplers import SAMPLERS
from lift_jax.stages import cli, shards

MANIFEST = "manifest.jsonl"
VIDEOS = "videos"
# Manifest fields that must agree for an existing video to count as done on a re-run.
SETTINGS = ("num_frames", "height", "width", "sampler", "num_steps", "guidance_scale",
            "use_dynamic_cfg", "negative_prompt")


def read_prompts(path: str) -> list[str]:
  """Non-blank lines not starting with '#', stripped."""
  if not files.isfile(path):
    raise FileNotFoundError(f"prompts file {path}: does not exist")
  prompts = [line.strip() for line in files.read_text(path).splitlines()]
  prompts = [p for p in prompts if p and not p.startswith("#")]
  if not prompts:
    raise ValueError(f"prompts file {path}: no prompts (blank lines and # comments are skipped)")
  return prompts


def plan(prompts: list[str], num_videos_per_prompt: int, seed: int) -> list[dict]:
  """One entry per video to exist: index, prompt, seed and path relative to the output folder."""
  if num_videos_per_prompt < 1:
    raise ValueError(f"num_videos_per_prompt={num_videos_per_prompt}: expected >= 1")
  out = []
  for i, prompt in enumerate(prompts):
    for j in range(num_videos_per_prompt):
      k = i * num_videos_per_prompt + j
      out.append({"prompt": prompt, "seed": seed + k, "path": f"{VIDEOS}/{k:05d}.mp4",
                  "index": k, "prompt_index": i})
  return out


def settings_of(cfg, dtype: str) -> dict:
  """The generation settings every manifest row carries."""
  s, v = cfg.sampling, cfg.video
  return {"num_frames": v.num_frames, "height": v.height, "width": v.width, "fps": v.fps,
          "sampler": s.sampler, "num_steps": s.num_steps, "guidance_scale": s.guidance_scale,
          "use_dynamic_cfg": s.use_dynamic_cfg, "negative_prompt": s.negative_prompt,
          "dtype": dtype}


def read_manifest(path: str) -> list[dict]:
  """The manifest's rows; a cut last line (a run killed while appending) is dropped."""
  if not files.exists(path):
    return []
  lines = [(n, line) for n, line in enumerate(files.read_text(path).splitlines(), 1)
           if line.strip()]
  rows = []
  for pos, (n, line) in enumerate(lines):
    try:
      row = json.loads(line)
    except json.JSONDecodeError as err:
      if pos == len(lines) - 1:
        print(f"note: {path}:{n}: dropping a cut last line", file=sys.stderr)
        break
      raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from err
    if not isinstance(row, dict) or "path" not in row:
      raise ValueError(f"{path}:{n}: expected a JSON object with a 'path'")
    rows.append(row)
  return rows


def finished(out: str, rows: list[dict], planned: list[dict], settings: dict,
             others: set[str] = frozenset()) -> tuple[list[dict], set[str]]:
  """(manifest rows to keep, planned paths already done) from existing manifest `rows`. A row
  counts if its video exists and its prompt, seed and settings match this run; a mismatch is an
  error (the old video would silently stand for a different one). Rows of `others` (paths another
  process makes) are left to that process."""
  manifest = files.join(out, MANIFEST)
  by_path = {p["path"]: p for p in planned}
  keep, done = [], set()
  for row in rows:
    if row["path"] in others or not files.isfile(files.join(out, row["path"])):
      continue  # another host's, or listed but missing: made again
    want = by_path.get(row["path"])
    if want is not None:
      expected = {"prompt": want["prompt"], "seed": want["seed"],
                  **{k: settings[k] for k in SETTINGS}}
      for key, value in expected.items():
        if row.get(key) != value:
          raise ValueError(f"{manifest}: {row['path']} was made with {key}={row.get(key)!r}, "
                           f"this run asks for {value!r}; use another --out or --overwrite")
      if row["path"] in done:
        continue
      done.add(row["path"])
    keep.append(row)
  return keep, done


def to_frames(videos):
  """[B,3,F,H,W] in [-1,1] -> uint8 [B,F,H,W,3] on the device (a quarter of the bytes to copy);
  the same rounding as `data.video.to_uint8_frames`."""
  import jax.numpy as jnp

  x = jnp.clip(jnp.rint((videos.astype(jnp.float32) + 1.0) * 127.5), 0, 255)
  return x.astype(jnp.uint8).transpose(0, 2, 3, 4, 1)


def run(cfg, prompts_file: str, out: str, *, model: str | None = None,
        num_videos_per_prompt: int | None = None, overwrite: bool = False,
        progress: bool = True) -> dict:
  """Generates every planned video not yet in `out`; returns the summary."""
  start = time.perf_counter()
  prompts = read_prompts(prompts_file)
  nvp = num_videos_per_prompt or cfg.num_videos_per_prompt
  planned = plan(prompts, nvp, cfg.seed)
  out = files.absolute(out)
  manifest = files.join(out, MANIFEST)
  m = cfg.model
  # Model folders on a URI are copied to local disk once (their readers take local files).
  root, transformer, vae, text_encoder, tokenizer, scheduler = map(files.local_mirror, (
      model or m.root, m.transformer, m.vae, m.text_encoder, m.tokenizer, m.scheduler))
  # Cheap checks first: every component named and readable before any weights are loaded.
  paths = pipeline_lib.resolve_paths(root, transformer=transformer, vae=vae,
                                     text_encoder=text_encoder, tokenizer=tokenizer,
                                     scheduler=scheduler)
  if scheduler is None and paths.scheduler is None:
    pipeline_lib.load_schedule(None, m.schedule)  # a bad preset name fails here
  if cfg.sampling.sampler not in SAMPLERS:
    raise ValueError(f"config sampling.sampler={cfg.sampling.sampler!r}: expected one of "
                     f"{SAMPLERS}")
  dtype = pipeline_lib.resolve_dtype(m.dtype)
  settings = settings_of(cfg, dtype)
  own = shards.shard_path(manifest)  # this process's manifest (the manifest for one process)
  if overwrite:
    if jax.process_index() == 0:
      files.remove(manifest)
      files.rmtree(files.join(out, VIDEOS))
    if own != manifest:
      files.remove(own)
    parallel.barrier(f"generate-overwrite:{out}")
  files.makedirs(files.join(out, VIDEOS))
  mine = parallel.process_share(planned)
  others = {p["path"] for p in planned} - {p["path"] for p in mine}
  rows = read_manifest(manifest) + (read_manifest(own) if own != manifest else [])
  keep, done = finished(out, rows, mine, settings, others)
  mine_paths = {p["path"] for p in mine}
  extras = [r for r in keep if r["path"] not in mine_paths]  # rows no process of this run makes
  if own != manifest:  # process 0 carries the extras over in the merge
    keep = [r for r in keep if r["path"] in mine_paths]
  records.write_jsonl(own, keep)  # drops rows whose video is gone, and duplicates
  pending = [p for p in mine if p["path"] not in done]
  summary = {"out": out, "manifest": manifest, "prompts": len(prompts), "videos": len(planned),
             "skipped_existing": len(mine) - len(pending), "generated": 0,
             "settings": settings, "process": jax.process_index(),
             "processes": jax.process_count()}
  if not pending:
    _merge(manifest, extras if jax.process_index() == 0 else ())
    summary.update(model={k: files.original(v) for k, v in paths.to_json().items()},
                   seconds=round(time.perf_counter() - start, 2))
    return summary

  runtime.setup(cfg.get("compilation_cache"))
  # Each process samples its own videos on its own devices: no collective spans hosts.
  mesh = parallel.mesh_from_config(cfg.mesh.to_dict(), jax.local_devices(),
                                   single_device_none=True)
  pipe = pipeline_lib.load_pipeline(
      root, transformer=transformer, vae=vae, text_encoder=text_encoder,
      tokenizer=tokenizer, scheduler=scheduler, schedule=m.schedule, dtype=dtype,
      param_dtype=m.param_dtype, vae_dtype=m.vae_dtype, text_encoder_dtype=m.text_encoder_dtype,
      mesh=mesh, attention_impl=m.attention_impl, vae_tiling=cfg.vae.tiling,
      max_sequence_length=cfg.sampling.max_sequence_length, progress=progress)
  model_paths = {k: v and files.original(files.absolute(v)) for k, v in pipe.paths.items()}
  batch = cfg.batch_size or pipe.batch_ways
  s, v = cfg.sampling, cfg.video

  def write(rows, videos):
    """Videos first (each atomically), then their manifest rows: a row means a finished video."""
    videos = np.asarray(videos)  # waits for the device here, not in the sampling loop
    for row, frames in zip(rows, videos):
      video_lib.write_video(files.join(out, row["path"]), frames, fps=v.fps)
    files.append_lines(own, [json.dumps(row, ensure_ascii=False) for row in rows])

  sample_start = time.perf_counter()
  bar = tqdm(total=len(pending), unit="video", disable=not progress, desc="generate")
  # mp4 encoding of one batch overlaps the sampling of the next.
  with futures.ThreadPoolExecutor(1) as writer:
    last = None
    for i in range(0, len(pending), batch):
      chunk = pending[i:i + batch]
      videos = pipe.generate(
          [p["prompt"] for p in chunk], [p["seed"] for p in chunk], num_frames=v.num_frames,
          height=v.height, width=v.width, num_steps=s.num_steps,
          guidance_scale=s.guidance_scale, use_dynamic_cfg=s.use_dynamic_cfg, sampler=s.sampler,
          negative_prompt=s.negative_prompt, pad_to=batch, decode_batch_size=cfg.vae.batch_size)
      rows = [{**p, **settings, "model": model_paths} for p in chunk]
      if last is not None:
        last.result()
      last = writer.submit(write, rows, to_frames(videos))
      bar.update(len(chunk))
    if last is not None:
      last.result()
  bar.close()
  seconds = time.perf_counter() - sample_start
  _merge(manifest, extras if jax.process_index() == 0 else ())
  summary.update(generated=len(pending), model=model_paths, batch_size=batch,
                 generated_indices=[p["index"] for p in pending],
                 seconds=round(time.perf_counter() - start, 2),
                 seconds_per_video=round(seconds / len(pending), 3))
  return summary


def _merge(manifest: str, extras) -> None:
  """Process 0 merges the per-process manifests (video order), after rows no one remade."""
  shards.merge(manifest, lambda row: row.get("index", 0), keep=extras, read=read_manifest)


def define_flags() -> dict:
  return dict(
      config=cli.config_flag("configs/cogvideox_2b.py", "generation config file"),
      prompts=flags.DEFINE_string("prompts", None, "text file: one prompt a line", required=True),
      out=flags.DEFINE_string("out", None, "output folder (videos/ and manifest.jsonl)",
                              required=True),
      model=flags.DEFINE_string("model", None,
                                "diffusers pipeline root (default: config.model.root)"),
      num=flags.DEFINE_integer("num_videos_per_prompt", None,
                               "videos per prompt, each with its own seed "
                               "(default: config.num_videos_per_prompt)"),
      overwrite=flags.DEFINE_bool("overwrite", False, "delete DIR's manifest and videos first"),
      progress=flags.DEFINE_bool("progress", True, "show a progress bar"))


def stage(f: dict) -> dict:
  return run(f["config"].value, f["prompts"].value, f["out"].value, model=f["model"].value,
             num_videos_per_prompt=f["num"].value, overwrite=f["overwrite"].value,
             progress=f["progress"].value)


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv)


if __name__ == "__main__":
  main()
