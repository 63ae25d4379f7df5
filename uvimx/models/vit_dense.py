"""ViT that predicts every pixel of every patch: UViM's "base model only".

The UViM paper's ablation of the guiding code trains the stage-I base model
without it: a plain ViT over image patches whose per-token head predicts all
pixels of its patch. Its outputs use big_vision UViM's layout, logits of shape
(B, num_patches, channels, patch_pixels), so the tasks in `uvimx/tasks` that
encode labels for UViM also train and decode this model.
"""
from typing import Mapping, Optional, Sequence

import einops
import flax.linen as nn
import numpy as np

from uvimx.models import vit


class Model(nn.Module):
  """Image (B, H, W, 3) -> {name: logits (B, num_patches, C, patch_pixels)}.

  Attributes:
    patch_size: (hp, wp) pixels per patch.
    input_size: (H, W) of the images; a multiple of `patch_size`.
    width: token width.
    depth: number of transformer blocks.
    mlp_dim: hidden width of the MLP blocks (None: 4 * width).
    num_heads: attention heads.
    posemb: "learn" or "sincos2d".
    dropout: dropout rate after the position embeddings and in every block.
    outputs: {name: channels}: one head `head_{name}` per output.
  """
  patch_size: Sequence[int]
  input_size: Sequence[int]
  width: int
  depth: int
  mlp_dim: Optional[int]
  num_heads: int
  outputs: Mapping[str, int]
  posemb: str = "learn"
  dropout: float = 0.0

  @nn.compact
  def __call__(self, image, *, train=False):
    if tuple(image.shape[1:3]) != tuple(self.input_size):
      raise ValueError(
          f"The model was built for {tuple(self.input_size)} images "
          f"(config.model.input_size) but got a batch of shape {image.shape}; "
          "resize the images in the pp string to match.")
    grid = np.array(self.input_size) // np.array(self.patch_size)
    if any(grid * np.array(self.patch_size) != np.array(self.input_size)):
      raise ValueError(f"input_size {tuple(self.input_size)} is not a multiple"
                       f" of patch_size {tuple(self.patch_size)}.")

    x = nn.Conv(self.width, tuple(self.patch_size), strides=self.patch_size,
                padding="VALID", name="embedding")(image)
    x = einops.rearrange(x, "b h w c -> b (h w) c")
    x = x + vit.get_posemb(self, self.posemb, grid, self.width,
                           "pos_embedding", x.dtype)
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x = vit.Encoder(depth=self.depth, mlp_dim=self.mlp_dim,
                    num_heads=self.num_heads, dropout=self.dropout,
                    name="encoder")(x, deterministic=not train)

    # Zero-initialised head kernels, as big_vision's: every pixel starts at
    # the uniform distribution (loss exactly log C) instead of at the noise
    # of a random projection to C x patch_pixels logits (initial depth loss
    # 6.0 > log 256). The encoder gets gradients from the first update on;
    # in a 300-step depth comparison a LeCun-normal head trained no better.
    patch_pixels = int(np.prod(self.patch_size))
    return {
        name: nn.DenseGeneral(features=(channels, patch_pixels),
                              kernel_init=nn.initializers.zeros,
                              name=f"head_{name}")(x)
        for name, channels in self.outputs.items()}
