"""Vectorised numpy ray caster for the synthetic_scenes dataset.

Pure numpy (no TensorFlow) so it can be unit-tested and benchmarked alone.
Every pixel casts exactly one ray; all rays of an image are intersected at once.

Conventions:

* World frame: metres, y up, floor plane y = 0. The room is the box
  x in [-W/2, W/2], y in [0, H], z in [-D, 0] with a floor (y = 0), a ceiling
  (y = H), a back wall (z = -D), a left wall (x = -W/2) and a right wall
  (x = W/2), and no front wall (z = 0). The camera stands inside the room near
  the open front and looks roughly along -z, so the "left" wall is on the left
  of the image.
* Camera frame: OpenCV, x right, y down, z forward. `camera_to_world` (4x4)
  maps homogeneous camera-frame points to the world frame.
* Pixel (row i, col j) has its centre at (u, v) = (j + 0.5, i + 0.5); its ray
  direction in the camera frame is K^-1 [u, v, 1] with
  K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], `intrinsics` = [fx, fy, cx, cy].
* Depth is the camera-frame z of the hit point (like NYU depth), not the ray
  length. Since K^-1 [u, v, 1] has z = 1, it equals the ray parameter t.
* Normals are unit vectors in the camera frame facing the camera (n . ray < 0).
* Classes: `CLASS_NAMES`, things first (label < NUM_THINGS <=> thing), as in
  COCO panoptic's contiguous labels. Each scene holds 2-8 things resting on the
  floor: spheres, boxes (rotated about y), capped vertical cylinders and
  vertical cones with their base on the floor.
* Appearance: Lambertian shading from a random directional light (always
  from above; only things cast shadows) plus ambient light, per-surface
  colours sampled in HSV with any hue, and a mild texture made of world-space
  sinusoids. One ray per pixel, so the image and the labels agree exactly.
* Instances: 0 for stuff; visible things are numbered 1..N in the order they
  were sampled (objects with no visible pixel are skipped).
* Panoptic segments: one per visible thing (segment id = instance id), then
  one per visible stuff class in `CLASS_NAMES` order (segment id N + 1 + k for
  the k-th visible stuff class). Every pixel belongs to exactly one segment.
* Boundaries: a pixel is a boundary pixel iff any of its (in-image)
  4-neighbours has a different (semantic, instance) pair. Since segments and
  (semantic, instance) pairs are in bijection, this is computed on segment ids.

Ranges: room width 3-7 m, height 2.4-3.5 m, depth 4-8 m; camera 1.4-1.6 m
above the floor, tilted down by 5-30 degrees, turned by -15..15 degrees; one
camera model for all scenes, like a real dataset's single sensor: horizontal
field of view 60 degrees, square pixels, principal point at the image centre
(metric depth from one image is only defined up to the scale of the scene, so
the fixed lens and the narrow camera height are what make it learnable); things stand 1-5 m ahead of the camera. With these ranges every ray of
a square image hits the room (`cast_room` checks it).

The image size does not affect the random draws (only the intrinsics), so a
seed yields the same scene at every resolution.
"""
import colorsys
import dataclasses
import functools
import math

import numpy as np

CLASS_NAMES = ("sphere", "box", "cylinder", "cone",
               "floor", "ceiling", "back_wall", "left_wall", "right_wall")
NUM_THINGS = 4
(SPHERE, BOX, CYLINDER, CONE,
 FLOOR, CEILING, BACK_WALL, LEFT_WALL, RIGHT_WALL) = range(len(CLASS_NAMES))

# One lens for every scene (see the module docstring).
HORIZONTAL_FOV_DEGREES = 60.0
# Offset along the normal for shadow rays, so a surface does not shadow itself.
_SHADOW_EPS = 1e-4
# Object placement by rejection sampling gives up after this many candidates.
_MAX_PLACEMENT_ATTEMPTS = 200
# Things stand between these distances (metres) in front of the camera,
# measured along -z; farther ones would be only a few pixels wide at 64x64.
_MIN_THING_DISTANCE = 1.0
_MAX_THING_DISTANCE = 5.0


@dataclasses.dataclass(frozen=True)
class Thing:
  """An object standing on the floor.

  Round things (sphere, cylinder, cone) have radius = half_x = half_z; a
  sphere's height is twice its radius.
  """
  label: int  # CLASS_NAMES index, < NUM_THINGS.
  x: float  # Footprint centre on the floor.
  z: float
  half_x: float  # Half extents of a box in its own (yawed) frame.
  half_z: float
  height: float
  yaw: float  # Rotation about the world y axis (only matters for boxes).
  color: tuple[float, float, float]  # Display RGB in [0, 1] when fully lit.
  texture: float  # Amplitude of the procedural texture.

  @property
  def footprint_radius(self):
    if self.label == BOX:
      return math.hypot(self.half_x, self.half_z)
    return self.half_x


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything needed to render one image."""
  image_size: tuple[int, int]  # (height, width) in pixels.
  intrinsics: np.ndarray  # (4,) [fx, fy, cx, cy].
  camera_to_world: np.ndarray  # (4, 4).
  room: tuple[float, float, float]  # (width, height, depth) in metres.
  things: tuple[Thing, ...]
  stuff_colors: np.ndarray  # (5, 3) colours of floor, ceiling, back/left/right.
  stuff_textures: np.ndarray  # (5,) texture amplitudes, same order.
  light: np.ndarray  # (3,) unit vector pointing towards the directional light.
  ambient: float
  waves: np.ndarray  # (4, K): texture wave vectors (rows 0-2) and phases.


def _hsv(rng, s_range, v_range):
  return colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*s_range),
                             rng.uniform(*v_range))


def _float32_exact(x):
  # Stored camera parameters are float32; rendering with the float32-rounded
  # values makes them describe the rendered geometry exactly.
  return np.asarray(x, np.float32).astype(np.float64)


def _camera_to_world(position, yaw, pitch):
  """Pose of a camera turned left by `yaw` and tilted down by `pitch`."""
  heading = np.array([-np.sin(yaw), 0.0, -np.cos(yaw)])
  right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
  forward = np.cos(pitch) * heading - np.sin(pitch) * np.array([0.0, 1.0, 0.0])
  down = np.cross(forward, right)  # Right-handed: right x down = forward.
  pose = np.eye(4)
  pose[:3, :3] = np.stack([right, down, forward], axis=1)
  pose[:3, 3] = position
  return pose


def _sample_thing(rng, room, camera, half_fov, others):
  """Samples a thing, or returns None if it misses the room or the view.

  Rejection sampling on footprint circles also keeps it clear of `others`.
  """
  label = int(rng.integers(NUM_THINGS))
  radius = rng.uniform(0.15, 0.55)
  if label == BOX:
    half_z, height = rng.uniform(0.15, 0.55), rng.uniform(0.2, 1.2)
  else:
    half_z, height = radius, (
        2 * radius if label == SPHERE else rng.uniform(0.3, 1.4))
  footprint = math.hypot(radius, half_z) if label == BOX else radius
  cam_x, _, cam_z = camera["position"]
  x = rng.uniform(-room[0] / 2, room[0] / 2)
  z = rng.uniform(max(-room[2], cam_z - _MAX_THING_DISTANCE),
                  cam_z - _MIN_THING_DISTANCE)
  inside = (abs(x) + footprint <= room[0] / 2 and z - footprint >= -room[2]
            and z + footprint <= cam_z - _MIN_THING_DISTANCE)
  # Keep the centre inside the horizontal field of view so most things show.
  ahead = -math.sin(camera["yaw"]) * (x - cam_x) - math.cos(camera["yaw"]) * (
      z - cam_z)
  in_view = ahead >= math.cos(half_fov) * math.hypot(x - cam_x, z - cam_z)
  clear = all(math.hypot(x - o.x, z - o.z) > footprint + o.footprint_radius
              + 0.05 for o in others)
  if not (inside and in_view and clear):
    return None
  yaw = rng.uniform(0, np.pi) if label == BOX else 0.0
  return Thing(label=label, x=x, z=z, half_x=radius, half_z=half_z,
               height=height, yaw=yaw,
               color=_hsv(rng, (0.15, 1.0), (0.3, 1.0)),
               texture=rng.uniform(0.0, 0.15))


def sample_scene(rng, height, width):
  """Samples a random room, camera, lighting and 2-8 things.

  Args:
    rng: a `np.random.Generator`, the only source of randomness.
    height: image height in pixels, at most `width` (taller images would see
      through the open front of the room).
    width: image width in pixels.

  Returns:
    A `Scene`.
  """
  room = (rng.uniform(3.0, 7.0), rng.uniform(2.4, 3.5), rng.uniform(4.0, 8.0))
  half_fov = np.deg2rad(HORIZONTAL_FOV_DEGREES) / 2
  # The pitch and yaw ranges keep every ray pointing towards -z for square
  # images, so no ray escapes through the open front (see `cast_room`).
  camera = {
      "position": np.array([rng.uniform(-0.25, 0.25) * room[0],
                            rng.uniform(1.4, 1.6), rng.uniform(-1.0, -0.2)]),
      "yaw": np.deg2rad(rng.uniform(-15.0, 15.0)),
      "pitch": np.deg2rad(rng.uniform(5.0, 30.0)),
  }
  focal = width / 2 / np.tan(half_fov)
  num_things = int(rng.integers(2, 9))
  things = []
  for _ in range(_MAX_PLACEMENT_ATTEMPTS):
    if len(things) == num_things:
      break
    thing = _sample_thing(rng, room, camera, half_fov, things)
    if thing is not None:
      things.append(thing)
  wall = _hsv(rng, (0.0, 0.6), (0.45, 1.0))
  stuff_colors = np.array([_hsv(rng, (0.1, 0.8), (0.3, 0.9)),  # Floor.
                           _hsv(rng, (0.0, 0.2), (0.7, 1.0)),  # Ceiling.
                           wall, wall, wall])
  azimuth = rng.uniform(0, 2 * np.pi)
  elevation = np.deg2rad(rng.uniform(25, 75))
  light = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation),
                    np.cos(elevation) * np.sin(azimuth)])
  directions = rng.normal(size=(3, 4))
  directions /= np.linalg.norm(directions, axis=0)
  waves = np.concatenate([directions * rng.uniform(2.0, 12.0, size=4),
                          rng.uniform(0, 2 * np.pi, size=(1, 4))])
  return Scene(
      image_size=(height, width),
      intrinsics=_float32_exact([focal, focal, width / 2, height / 2]),
      camera_to_world=_float32_exact(_camera_to_world(**camera)),
      room=room, things=tuple(things), stuff_colors=stuff_colors,
      stuff_textures=rng.uniform(0.0, 0.12, size=5), light=light,
      ambient=rng.uniform(0.3, 0.5), waves=waves)


def camera_rays(scene):
  """Returns the camera centre (3,) and world ray directions (H*W, 3).

  Directions are R K^-1 [u, v, 1], not normalised: the ray parameter of a hit
  is its camera-frame depth.
  """
  fx, fy, cx, cy = scene.intrinsics
  height, width = scene.image_size
  v, u = np.mgrid[:height, :width] + 0.5
  rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
  pose = scene.camera_to_world
  return pose[:3, 3], rays.reshape(-1, 3) @ pose[:3, :3].T


# numpy reductions over a short last axis are slow (e.g. 20x slower than
# einsum or an elementwise chain over the columns for (4096, 3) arrays).


def _dot(a, b):
  return np.einsum("...i,...i->...", a, b)


def _min_over_columns(a):
  return functools.reduce(np.minimum, a.T)


def _facing_axis_normal(axis, dirs):
  """Unit normal along `axis` pointing against each ray."""
  normals = np.zeros(dirs.shape)
  rows = np.arange(len(dirs))
  normals[rows, axis] = -np.sign(dirs[rows, axis])
  return normals


def _slabs(origins, dirs, lo, hi):
  """Per-axis entry and exit ray parameters of an axis-aligned box."""
  with np.errstate(divide="ignore", invalid="ignore"):
    t0, t1 = (lo - origins) / dirs, (hi - origins) / dirs
  return np.minimum(t0, t1), np.maximum(t0, t1)


def _quadratic(a, half_b, c):
  """Both roots of a t^2 + 2 half_b t + c = 0, NaN where there is none."""
  with np.errstate(divide="ignore", invalid="ignore"):
    sqrt_disc = np.sqrt(half_b**2 - a * c)
    return (-half_b - sqrt_disc) / a, (-half_b + sqrt_disc) / a


def _first_hit(t, valid):
  # NaN compares False, so rays with no real root are misses too.
  return np.where(valid & (t > 0), t, np.inf)


def _intersect_sphere(thing, origins, dirs):
  center = np.array([thing.x, thing.half_x, thing.z])
  oc = origins - center
  t, _ = _quadratic(_dot(dirs, dirs), _dot(oc, dirs),
                    _dot(oc, oc) - thing.half_x**2)
  t = _first_hit(t, True)  # The near root: rays start outside the sphere.
  return t, (origins + t[:, None] * dirs - center) / thing.half_x


def _intersect_box(thing, origins, dirs):
  c, s = np.cos(thing.yaw), np.sin(thing.yaw)
  to_world = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # Rotation about y.
  local_origins = (origins - np.array([thing.x, 0, thing.z])) @ to_world
  local_dirs = dirs @ to_world
  t_in, t_out = _slabs(local_origins, local_dirs,
                       np.array([-thing.half_x, 0, -thing.half_z]),
                       np.array([thing.half_x, thing.height, thing.half_z]))
  axis = t_in.argmax(axis=1)
  t, t_exit = t_in[np.arange(len(dirs)), axis], _min_over_columns(t_out)
  normals = _facing_axis_normal(axis, local_dirs) @ to_world.T
  return _first_hit(t, t <= t_exit), normals


def _intersect_cylinder(thing, origins, dirs):
  # Per-ray origins relative to the base centre, also for a shared origin.
  qd = origins - np.array([thing.x, 0, thing.z]) + np.zeros_like(dirs)
  side, _ = _quadratic(dirs[:, 0]**2 + dirs[:, 2]**2,
                       qd[:, 0] * dirs[:, 0] + qd[:, 2] * dirs[:, 2],
                       qd[:, 0]**2 + qd[:, 2]**2 - thing.half_x**2)
  y = qd[:, 1] + side * dirs[:, 1]
  side = _first_hit(side, (y >= 0) & (y <= thing.height))
  with np.errstate(divide="ignore", invalid="ignore"):
    cap = (thing.height - qd[:, 1]) / dirs[:, 1]
  on_cap = qd + cap[:, None] * dirs
  cap = _first_hit(cap, (dirs[:, 1] < 0) & (
      on_cap[:, 0]**2 + on_cap[:, 2]**2 <= thing.half_x**2))
  t = np.minimum(side, cap)
  hit = qd + t[:, None] * dirs
  normals = np.where((cap <= side)[:, None], [0.0, 1.0, 0.0],
                     hit * [1.0, 0.0, 1.0] / thing.half_x)
  return t, normals


def _intersect_cone(thing, origins, dirs):
  # Per-ray origins relative to the apex, also for a shared origin.
  apex = np.array([thing.x, thing.height, thing.z])
  qd = origins - apex + np.zeros_like(dirs)
  k2 = (thing.half_x / thing.height)**2
  # Double cone x^2 + z^2 = k^2 y^2 around the apex, cut to -height <= y <= 0.
  roots = _quadratic(
      dirs[:, 0]**2 + dirs[:, 2]**2 - k2 * dirs[:, 1]**2,
      (qd[:, 0] * dirs[:, 0] + qd[:, 2] * dirs[:, 2]
       - k2 * qd[:, 1] * dirs[:, 1]),
      qd[:, 0]**2 + qd[:, 2]**2 - k2 * qd[:, 1]**2)
  t = np.inf
  for root in roots:  # The leading coefficient may be negative: try both.
    y = qd[:, 1] + root * dirs[:, 1]
    t = np.minimum(t, _first_hit(root, (y >= -thing.height) & (y <= 0)))
  normals = (qd + t[:, None] * dirs) * [1.0, -k2, 1.0]
  return t, normals / np.sqrt(_dot(normals, normals))[:, None]


_INTERSECT = {SPHERE: _intersect_sphere, BOX: _intersect_box,
              CYLINDER: _intersect_cylinder, CONE: _intersect_cone}


def cast_things(things, origins, dirs):
  """Nearest thing hit per ray (z-buffer over things).

  Args:
    things: sequence of `Thing`.
    origins: (3,) shared ray origin or (N, 3) per-ray origins.
    dirs: (N, 3) ray directions.

  Returns:
    t (N,) ray parameter (inf for no hit), index (N,) into `things` (-1 for no
    hit) and world normals (N, 3) of the hit surfaces.
  """
  t = np.full(len(dirs), np.inf)
  index = np.full(len(dirs), -1)
  normals = np.zeros(dirs.shape)
  if not things:
    return t, index, normals
  # Cull rays that miss a thing's bounding sphere before the exact test; for
  # all things at once: |o + t d - c|^2 = r^2 expanded into matrix products.
  centers = np.array([[o.x, o.height / 2, o.z] for o in things])
  radii = np.array([np.hypot(o.footprint_radius, o.height / 2) for o in things])
  half_b = _dot(origins, dirs)[..., None] - dirs @ centers.T
  c = (_dot(origins, origins)[..., None] - 2 * origins @ centers.T
       + _dot(centers, centers) - radii**2)
  # A ray meets the sphere ahead iff the roots are real and not both <= 0.
  near = (half_b**2 >= _dot(dirs, dirs)[:, None] * c) & ((half_b < 0) | (c < 0))
  for k, thing in enumerate(things):
    rays = np.flatnonzero(near[:, k])
    ray_origins = origins if origins.ndim == 1 else origins[rays]
    # Normals of missing rays come out non-finite; they are never used.
    with np.errstate(invalid="ignore"):
      t_k, normals_k = _INTERSECT[thing.label](thing, ray_origins, dirs[rays])
    closer = t_k < t[rays]
    rays = rays[closer]
    t[rays], index[rays], normals[rays] = t_k[closer], k, normals_k[closer]
  return t, index, normals


def cast_room(scene, origin, dirs):
  """Where rays from inside the room leave it: t (N,), labels, world normals."""
  width, height, depth = scene.room
  if not np.all(dirs[:, 2] < 0):
    raise ValueError("Some rays leave the room through its open front.")
  # From inside a box, the exit face is the one with the smallest exit t.
  _, t_out = _slabs(origin, dirs, np.array([-width / 2, 0, -depth]),
                    np.array([width / 2, height, 0]))
  axis = t_out.argmin(axis=1)
  rows = np.arange(len(dirs))
  positive = dirs[rows, axis] > 0
  labels = np.choose(axis, [np.where(positive, RIGHT_WALL, LEFT_WALL),
                            np.where(positive, CEILING, FLOOR),
                            np.full(len(dirs), BACK_WALL)])
  return t_out[rows, axis], labels, _facing_axis_normal(axis, dirs)


def render(scene):
  """Ray casts a scene.

  Returns:
    dict with "image" (H, W, 3) uint8, "depth" (H, W) float metres, "normals"
    (H, W, 3) unit camera-frame normals, "semantics" (H, W) CLASS_NAMES indices
    and "things" (H, W) index into scene.things (-1 for stuff).
  """
  height, width = scene.image_size
  origin, dirs = camera_rays(scene)
  t, labels, normals = cast_room(scene, origin, dirs)
  t_things, things, normals_things = cast_things(scene.things, origin, dirs)
  in_front = t_things < t
  t = np.where(in_front, t_things, t)
  things = np.where(in_front, things, -1)
  normals = np.where(in_front[:, None], normals_things, normals)
  # The padding entry is what index -1 (no thing) reads; it is masked anyway.
  thing_labels = np.array([o.label for o in scene.things] + [0], int)
  labels = np.where(in_front, thing_labels[things], labels)

  # Lambertian shading from a directional light; only things cast shadows
  # (the light is not blocked by the room, as if it came through the ceiling).
  # The light points upwards, so points above all things are never shadowed.
  points = origin + t[:, None] * dirs
  lambert = np.maximum(normals @ scene.light, 0.0)
  top = max([o.height for o in scene.things], default=0.0)
  lit = np.flatnonzero((lambert > 0) & (points[:, 1] < top))
  shadow_origins = points[lit] + _SHADOW_EPS * normals[lit]
  t_shadow, _, _ = cast_things(scene.things, shadow_origins,
                               np.broadcast_to(scene.light, (len(lit), 3)))
  lambert[lit[np.isfinite(t_shadow)]] = 0.0
  # Colour and texture amplitude per surface: things, then stuff classes.
  surface = np.where(things >= 0, things,
                     len(scene.things) + labels - NUM_THINGS)
  colors = np.concatenate([np.reshape([o.color for o in scene.things], (-1, 3)),
                           scene.stuff_colors])
  amplitudes = np.concatenate([[o.texture for o in scene.things],
                               scene.stuff_textures])
  # float32 sin is ~10x faster here and precise enough for a texture.
  phases = (points @ scene.waves[:3] + scene.waves[3]).astype(np.float32)
  waves = np.sin(phases) @ np.full(len(scene.waves[3]), 1 / len(scene.waves[3]))
  texture = 1 + amplitudes[surface] * waves
  shading = texture * (scene.ambient + (1 - scene.ambient) * lambert)
  # Colours live in display space (gamma 2) and shading in linear space, so a
  # fully lit surface shows its sampled colour at full saturation.
  image = np.round(255 * np.clip(colors[surface] * np.sqrt(shading)[:, None],
                                 0, 1))

  rotation = scene.camera_to_world[:3, :3]
  return {
      "image": image.astype(np.uint8).reshape(height, width, 3),
      "depth": t.reshape(height, width),
      "normals": (normals @ rotation).reshape(height, width, 3),
      "semantics": labels.reshape(height, width),
      "things": things.reshape(height, width),
  }


def boundaries(segments):
  """1 where any 4-neighbour has a different segment id, else 0."""
  vertical = segments[1:] != segments[:-1]
  horizontal = segments[:, 1:] != segments[:, :-1]
  edge = np.zeros(segments.shape, bool)
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  return edge.astype(np.uint8)


def panoptic(semantics, instances):
  """Panoptic segment ids and per-segment annotations (see module docstring).

  Args:
    semantics: (H, W) CLASS_NAMES indices.
    instances: (H, W) contiguous instance ids 1..N for things, 0 for stuff.

  Returns:
    (H, W) segment ids and a dict of per-segment "id", "label", "area" (pixel
    count) and "bbox" (normalised [ymin, xmin, ymax, xmax] pixel edges).
  """
  height, width = semantics.shape
  segments = instances.astype(np.int64)
  stuff = [c for c in range(NUM_THINGS, len(CLASS_NAMES))
           if np.any(semantics == c)]
  for k, label in enumerate(stuff):
    segments[semantics == label] = instances.max() + 1 + k
  num_segments = segments.max()
  labels = np.zeros(num_segments + 1, np.int64)
  labels[segments] = semantics
  rows = np.zeros((num_segments + 1, height), bool)
  rows[segments, np.arange(height)[:, None]] = True
  cols = np.zeros((num_segments + 1, width), bool)
  cols[segments, np.arange(width)] = True
  bbox = np.stack([rows.argmax(1) / height, cols.argmax(1) / width,
                   (height - rows[:, ::-1].argmax(1)) / height,
                   (width - cols[:, ::-1].argmax(1)) / width], axis=1)
  return segments, {
      "id": np.arange(1, num_segments + 1),
      "label": labels[1:],
      "area": np.bincount(segments.ravel(), minlength=num_segments + 1)[1:],
      "bbox": bbox[1:].astype(np.float32),
  }


def generate(seed, height, width):
  """Renders the scene of `seed` into the dataset's numpy features.

  Args:
    seed: anything `np.random.default_rng` accepts, e.g. (split_seed, index).
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    dict of numpy arrays matching the TFDS features (except "image/id").
  """
  scene = sample_scene(np.random.default_rng(seed), height, width)
  out = render(scene)
  # Renumber visible things 1..N in sampling order; stuff gets 0.
  visible = np.unique(out["things"][out["things"] >= 0])
  renumber = np.zeros(len(scene.things) + 1, np.int64)
  renumber[visible] = np.arange(1, len(visible) + 1)
  instances = renumber[out["things"]]  # Index -1 (stuff) reads the last 0.
  segments, objects = panoptic(out["semantics"], instances)
  depth_mm = np.round(out["depth"] * 1000)
  if depth_mm.min() <= 0 or depth_mm.max() >= 2**16:
    raise ValueError("Depth does not fit uint16 millimetres.")
  panoptic_rgb = segments[..., None] // 256**np.arange(3) % 256
  return {
      "image": out["image"],
      "depth": depth_mm.astype(np.uint16)[..., None],
      "normals": np.round((out["normals"] + 1) / 2 * 255).astype(np.uint8),
      "semantics": out["semantics"].astype(np.uint8)[..., None],
      "instances": instances.astype(np.uint16)[..., None],
      "boundaries": boundaries(segments)[..., None],
      "panoptic_image": panoptic_rgb.astype(np.uint8),
      "panoptic_objects": dict(objects,
                               is_crowd=np.zeros(len(objects["id"]), bool)),
      "intrinsics": scene.intrinsics.astype(np.float32),
      "camera_to_world": scene.camera_to_world.astype(np.float32),
  }
