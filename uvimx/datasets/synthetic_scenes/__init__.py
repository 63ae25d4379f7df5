"""synthetic_scenes: a download-free TFDS dataset of ray-cast rooms."""
from uvimx.datasets.synthetic_scenes.render import CLASS_NAMES
from uvimx.datasets.synthetic_scenes.render import NUM_THINGS
from uvimx.datasets.synthetic_scenes.synthetic_scenes import SyntheticScenes
