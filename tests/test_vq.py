"""The VQ functions against hand-computed codebooks, updates and splits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvimx.models import vq


def test_codewords_are_normalised_discounted_means():
  # Rows 3-4-5 and 0-(-2): dividing by the counts rescales, normalising
  # leaves the directions.
  e = vq.codewords(jnp.array([[3.0, 4.0], [0.0, -2.0]]), jnp.array([5.0, 0.5]))
  np.testing.assert_allclose(e, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)


def test_quantize_picks_the_nearest_codeword():
  e = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  # Squared distances of the last point: 0.6125 to e0, 0.5125 to e1.
  x = jnp.array([[[0.9, 0.2], [0.1, -2.0]], [[-0.6, 0.5], [0.3, 0.35]]])
  x_q, idx = vq.quantize(x, e)
  np.testing.assert_array_equal(idx, [[0, 3], [2, 1]])
  np.testing.assert_allclose(x_q, e[np.array([[0, 3], [2, 1]])], atol=1e-7)


def test_quantize_matches_brute_force_search():
  rng = np.random.RandomState(0)
  e = rng.normal(size=(64, 8)).astype("f4")
  x = rng.normal(size=(3, 50, 8)).astype("f4")
  _, idx = vq.quantize(x, e)
  dist = np.linalg.norm(x[:, :, None] - e[None, None], axis=-1)
  np.testing.assert_array_equal(idx, dist.argmin(-1))


def test_straight_through_gradient():
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  e = vq.codewords(jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
                   jnp.ones(5))
  w = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  loss = lambda x, e: jnp.sum(w * vq.quantize(x, e)[0])
  grad_x, grad_e = jax.grad(loss, argnums=(0, 1))(x, e)
  np.testing.assert_array_equal(grad_x, w)
  np.testing.assert_array_equal(grad_e, 0)


def test_assignment_stats_and_codebook_stats():
  idx = jnp.array([[0, 0, 1], [0, 3, 3]])
  x = jnp.arange(12, dtype=jnp.float32).reshape(2, 3, 2)
  counts, sums = vq.assignment_stats(idx, x, dict_size=5)
  np.testing.assert_array_equal(counts, [3, 1, 0, 2, 0])
  # Codeword 0 got (0, 1), (2, 3) and (6, 7); 1 got (4, 5); 3 got the rest.
  np.testing.assert_array_equal(
      sums, [[8, 11], [4, 5], [0, 0], [18, 20], [0, 0]])
  stats = vq.codebook_stats(counts)
  assert stats["codebook_max_ratio"] == pytest.approx(3 / 6)
  assert stats["codebook_zeros_ratio"] == pytest.approx(2 / 5)


def test_one_ema_step_by_hand():
  dictionary = jnp.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
  counts = jnp.array([2.0, 1.0, 0.5])
  idx = jnp.array([[0, 0, 2]])
  x = jnp.array([[[1.0, 1.0], [3.0, -1.0], [2.0, 2.0]]])
  batch_counts, batch_sums = vq.assignment_stats(idx, x, 3)
  new_dict, new_counts = vq.ema_update(dictionary, counts, batch_counts,
                                       batch_sums, momentum=0.5)
  # 0.5 * old + batch: codeword 0 gets (1, 1) + (3, -1), codeword 2 (2, 2).
  np.testing.assert_allclose(new_dict, [[4.5, 1.0], [1.5, 2.0], [2.0, 2.0]])
  np.testing.assert_allclose(new_counts, [3.0, 0.5, 1.25])


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)])
def test_split_reseeds_unused_codewords_from_the_most_used(key):
  rng = np.random.RandomState(2)
  dictionary = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  counts = jnp.array([10.0, 0.05, 4.0, 0.01])
  new_dict, new_counts = jax.jit(vq.split_unused, static_argnums=3)(
      dictionary, counts, key, 0.1)
  # Round 1 splits codeword 0 (count 10) into the least used slot 3:
  # counts (5, 0.05, 4, 5). Round 2: argmax takes the first of the tied 5s,
  # codeword 0 again, into slot 1: (2.5, 2.5, 4, 5). Then all are >= 0.1.
  np.testing.assert_array_equal(new_counts, [2.5, 2.5, 4.0, 5.0])
  e0 = np.asarray(dictionary[0])
  np.testing.assert_array_equal(new_dict[0], e0 / 4)
  np.testing.assert_array_equal(new_dict[2], dictionary[2])
  # The new codewords are copies of the halved (slot 3) and quartered
  # (slot 1) codeword 0 times noise within 1 +- PERTURB, elementwise.
  for slot, scale in ((3, 1 / 2), (1, 1 / 4)):
    noise = np.asarray(new_dict[slot]) / (e0 * scale)
    assert np.all(np.abs(noise - 1) <= vq.PERTURB * (1 + 1e-4))
    assert np.std(noise) > vq.PERTURB / 10  # Really perturbed.
  # The split codeword's direction (its codeword) is unchanged.
  np.testing.assert_allclose(vq.codewords(new_dict, new_counts)[0],
                             vq.codewords(dictionary, counts)[0], rtol=1e-6)


def test_split_ends_when_the_counts_cannot_all_reach_min_count():
  # Total 3 < 4 codewords x min_count 1: no number of splits lifts every
  # count to 1 (without the bound this loops forever). Each round halves the
  # first of the largest counts into the first of the smallest: (1, 0.5,
  # 0.5, 1), (0.5, 0.5, 0.5, 1), (0.5, 0.5, 0.5, 0.5), then slot 0 into
  # itself, (0.25, 0.5, 0.5, 0.5). Then the 4 rounds are spent.
  counts = jnp.array([2.0, 0.5, 0.5, 0.0])
  new_dict, new_counts = jax.jit(vq.split_unused, static_argnums=3)(
      jnp.ones((4, 2)), counts, jax.random.key(0), 1.0)
  np.testing.assert_array_equal(new_counts, [0.25, 0.5, 0.5, 0.5])
  assert np.all(np.isfinite(new_dict))


def test_no_split_when_every_codeword_is_used():
  dictionary = jnp.ones((3, 2))
  counts = jnp.array([0.1, 5.0, 0.2])
  new_dict, new_counts = vq.split_unused(dictionary, counts,
                                         jax.random.key(0), 0.1)
  np.testing.assert_array_equal(new_dict, dictionary)
  np.testing.assert_array_equal(new_counts, counts)
