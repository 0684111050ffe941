"""[model] Backbones, cached features, the trained head, evaluation, scoring and prediction."""
