"""Model ports: one folder a model (`modeling.py` + `params.py`)."""
