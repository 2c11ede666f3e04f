"""The VILA critic under its historic module name: the model is in `modeling.py`, loading in
`params.py`, the host-side `Critic` in `host.py`. Kept so `critic.vila.X` call sites keep working."""

from lift_jax.models.critic.host import (LIFT_SAMPLING, Critic, PromptBatch,  # noqa: F401
                                         build_batch, sample_frame_indices, sample_frames)
from lift_jax.models.critic.modeling import (MlpDownsampleProjector, VilaConfig,  # noqa: F401
                                             VilaCritic, downsample_2x2)
from lift_jax.models.critic.params import (KIND, PROJECTOR_PREFIX, SPEC, TOKENIZER_DIR,  # noqa: F401
                                           critic_ignored, critic_rules, infer_template,
                                           load_critic, load_tokenizer, projector_rules,
                                           save_critic, vila_config)
