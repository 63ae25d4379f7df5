"""uvimx: unified dense vision models in JAX/Flax, in the style of big_vision."""
