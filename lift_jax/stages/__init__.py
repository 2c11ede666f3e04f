"""The LiFT loop's stages as package modules, each a library (`run(...)`) and a command
(`lift-jax <stage>`, `python -m lift_jax.stages.<module>`; see `cli`): generate, score, prepare,
train, loop (the whole loop), convert / export, critic_train. Several processes split each stage's
work by global index and merge their shard files (`shards`)."""
