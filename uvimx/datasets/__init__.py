"""TFDS datasets of uvimx; importing this package registers their builders."""
from uvimx.datasets import nyuv2_labeled
from uvimx.datasets import synthetic_scenes
