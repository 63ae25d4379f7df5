"""Models: plain flax.linen modules that know nothing about tasks."""
