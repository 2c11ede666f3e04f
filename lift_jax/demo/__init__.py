"""The CPU demo's small world (configs/demo.py): tiny random models in upstream layouts
(`assets`), a rater standing in for human annotators (`rater`) and its stage (`rate`)."""
