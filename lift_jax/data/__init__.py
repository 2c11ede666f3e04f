"""Data: video files, the reward dataset (records, prepared latents) and grain loaders.

PyAV, tensorflow_datasets and grain load on first use.
"""

from lift_jax.data.records import (JoinResult, RewardRecord, join_records, read_jsonl,
                                   read_records, reward_from_labels, write_jsonl, write_records)
from lift_jax.data.video import (VideoReadError, clip_frame_indices, count_frames, load_clip,
                                 prepare_clip, read_video, resize_frames, to_uint8_frames,
                                 write_video)
