"""Everything one trial does: data, features, model, losses, training, the Ray Tune trainable."""
