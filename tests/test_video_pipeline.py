"""The grain video pipeline: sampling rules, one augmentation draw per clip, batches, resume,
per-process sharding, worker processes."""
import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from sltjax import checkpointing
from sltjax.data import augmentation, batching, sampling, video
from sltjax.data.tokenizers import GlossVocabulary, WordTokenizer
from sltjax.experiments import c2rl, mmtlb, sign2gpt


# --- temporal sampling -----------------------------------------------------------------------
def draws(strategy, num_frames, train, n=40, **kwargs):
  rngs = [np.random.default_rng(i) for i in range(n)]
  return [sampling.strategy(strategy)(num_frames, rng, train, **kwargs) for rng in rngs]


@pytest.mark.parametrize('num_frames', [9, 37, 120, 300])
def test_mmtlb_train_length_is_a_multiple_of_4_in_half_to_one_and_a_half_t(num_frames):
  lengths = set()
  for indices in draws('mmtlb', num_frames, True):
    n = len(indices)
    lengths.add(n)
    assert n % 4 == 0 and 0.5 * num_frames - 2 <= n <= min(400, 1.5 * num_frames) + 2
    assert np.all(np.diff(indices) >= 0) and indices.min() >= 0 and indices.max() < num_frames
    if n <= num_frames:  # frames dropped: no repeats
      assert len(np.unique(indices)) == n
    else:  # frames duplicated: every frame kept
      assert set(indices) == set(range(num_frames))
  assert len(lengths) >= 3  # the length is random


def test_mmtlb_test_uses_all_frames_or_the_centre_400():
  np.testing.assert_array_equal(mmtlb.sample_random_length(57, None, False), np.arange(57))
  np.testing.assert_array_equal(mmtlb.sample_random_length(500, None, False), np.arange(50, 450))


def test_c2rl_keeps_a_quarter_one_frame_per_segment():
  np.testing.assert_array_equal(c2rl.sample_one_per_segment(40, None, False), np.arange(0, 40, 4))
  for indices in draws('c2rl', 40, True):
    np.testing.assert_array_equal(indices // 4, np.arange(10))  # one per segment of 4
  assert len({tuple(i) for i in draws('c2rl', 40, True)}) > 1
  assert len(c2rl.sample_one_per_segment(3, None, False)) == 1
  assert len(c2rl.sample_one_per_segment(130, None, False)) == 32


def test_sign2gpt_stride_2_random_start_at_most_256():
  np.testing.assert_array_equal(sign2gpt.sample_every_second_frame(21, None, False),
                                np.arange(0, 21, 2))
  offsets = {int(i[0]) for i in draws('sign2gpt', 21, True)}
  assert offsets == {0, 1}
  for indices in draws('sign2gpt', 1000, True):
    assert len(indices) == 256 and np.all(np.diff(indices) == 2)
  starts = {int(i[0]) for i in draws('sign2gpt', 1000, True)}
  assert len(starts) > 10  # a random window of the long clip
  np.testing.assert_array_equal(sign2gpt.sample_every_second_frame(1000, None, False),
                                np.arange(244, 756, 2))


def test_all_frames_and_the_max_frames_cap_is_evenly_spaced():
  np.testing.assert_array_equal(sampling.sample_frames('all', 7, None, True), np.arange(7))
  np.testing.assert_array_equal(sampling.sample_frames('all', 100, None, False, max_frames=5),
                                [0, 25, 50, 74, 99])
  with pytest.raises(ValueError, match=r"data.sampling='s3d' is not a registered sampling "
                                       r"strategy; registered: \['all', 'c2rl', 'mmtlb'"):
    sampling.sample_frames('s3d', 7, None, True)


# --- spatial augmentation --------------------------------------------------------------------
def augment_config(**overrides):
  config = video.default_config()
  config.crop_size, config.eval_resize = 48, 48
  config.update(dict(rotation_degrees=10.0, hflip_prob=0.5, colour_jitter_prob=1.0,
                     grayscale_prob=0.3))
  config.update(overrides)
  return config


def textured(height=60, width=80, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_every_frame_of_a_clip_gets_the_same_draw():
  config = augment_config()
  frame = cv2.GaussianBlur(textured(), (7, 7), 2)
  outputs = set()
  for seed in range(6):
    transform = augmentation.draw_clip_transform(60, 80, np.random.default_rng(seed), config, True)
    clip = [augmentation.apply(frame.copy(), transform, 48) for _ in range(5)]
    assert all(np.array_equal(clip[0], c) for c in clip)  # identical frames stay identical
    outputs.add(clip[0].tobytes())
  assert len(outputs) == 6  # and clips differ from one another


def test_eval_centre_crop_matches_resize_then_crop():
  frame = cv2.GaussianBlur(textured(60, 80), (5, 5), 1.5)
  config = augment_config(crop_size=48, eval_resize=60)
  got = augmentation.apply(frame, augmentation.draw_clip_transform(60, 80, None, config, False), 48)
  resized = cv2.resize(frame, (80, 60), interpolation=cv2.INTER_LINEAR)  # short side already 60
  want = resized[6:54, 16:64]
  assert np.abs(got.astype(int) - want).max() <= 1


def test_eval_squash_resizes_the_whole_frame_to_the_square():
  """Sign2GPT's release evaluates on the whole frame squashed to 224 x 224 (PHOENIX's 210 x 260
  keeps its full height, which the centre crop cuts by 19%)."""
  frame = cv2.GaussianBlur(textured(60, 80), (5, 5), 1.5)
  config = augment_config(crop_size=48, eval_crop='squash')
  got = augmentation.apply(frame, augmentation.draw_clip_transform(60, 80, None, config, False), 48)
  want = cv2.resize(frame, (48, 48), interpolation=cv2.INTER_LINEAR)
  assert np.abs(got.astype(int) - want).max() <= 1
  with pytest.raises(ValueError, match=r"data.eval_crop='middle'; expected one of \('centre', "
                                       r"'squash'\)"):
    augmentation.draw_clip_transform(60, 80, None, augment_config(eval_crop='middle'), False)


def test_rotation_prob_rotates_that_share_of_clips():
  config = augment_config(rotation_prob=0.3)
  rng = np.random.default_rng(0)
  rotated = [abs(augmentation.draw_clip_transform(60, 80, rng, config, True).warp[0, 1]) > 1e-6
             for _ in range(600)]
  assert 0.25 < np.mean(rotated) < 0.35
  always = augment_config()  # rotation_prob 1: every clip, and no extra draw
  assert all(abs(augmentation.draw_clip_transform(60, 80, rng, always, True).warp[0, 1]) > 1e-6
             for _ in range(20))


def test_flip_mirrors_the_same_crop():
  frame = cv2.GaussianBlur(textured(), (5, 5), 1.5)
  plain = augment_config(rotation_degrees=0.0, hflip_prob=0.0, colour_jitter_prob=0.0,
                         grayscale_prob=0.0)
  flipped = augment_config(rotation_degrees=0.0, hflip_prob=1.0, colour_jitter_prob=0.0,
                           grayscale_prob=0.0)
  a = augmentation.apply(frame, augmentation.draw_clip_transform(
      60, 80, np.random.default_rng(3), plain, True), 48)
  b = augmentation.apply(frame, augmentation.draw_clip_transform(
      60, 80, np.random.default_rng(3), flipped, True), 48)
  assert np.abs(a[:, ::-1].astype(int) - b).max() <= 1


def test_colour_jitter_matches_torchvision_formulas_without_hue():
  frame = cv2.GaussianBlur(textured(48, 48), (5, 5), 1.5)
  config = augment_config(crop_size=48, eval_resize=48, random_crop='centre',
                          rotation_degrees=0.0, hflip_prob=0.0, hue=0.0, grayscale_prob=0.0)
  rng = np.random.default_rng(5)
  transform = augmentation.draw_clip_transform(48, 48, rng, config, True)
  got = augmentation.apply(frame, transform, 48).astype(float)
  replay = np.random.default_rng(5)  # the same draws, in the order torchvision applies them
  replay.uniform(0, 0)  # the rotation angle (0 here)
  replay.random()  # jitter coin
  b, c, s = (replay.uniform(0.6, 1.4) for _ in range(3))
  luma = np.array([0.299, 0.587, 0.114])
  x = frame.astype(float) * b
  x = c * x + (1 - c) * (x @ luma).mean()
  x = s * x + (1 - s) * (x @ luma)[..., None]
  ok = (x.max(-1) < 254) & (x.min(-1) > 1)  # away from clipping, where clamps differ
  assert np.abs(got - x)[ok].max() <= 1.5


def test_grayscale_gives_equal_channels():
  config = augment_config(colour_jitter_prob=0.0, grayscale_prob=1.0)
  transform = augmentation.draw_clip_transform(60, 80, np.random.default_rng(0), config, True)
  out = augmentation.apply(textured(), transform, 48).astype(int)
  assert np.abs(out[..., 0] - out[..., 1]).max() <= 1 and np.abs(out[..., 1] - out[..., 2]).max() <= 1


def test_normalisation_variants_on_host_and_device_agree():
  frames = textured(4, 5)
  np.testing.assert_allclose(augmentation.normalize(frames, 'minus_one_one')[0, 0],
                             frames[0, 0] / 127.5 - 1, atol=1e-6)
  bgr = augmentation.normalize(frames, 'imagenet', 'bgr')
  want = (frames[..., ::-1] - augmentation.IMAGENET_MEAN[::-1]) / augmentation.IMAGENET_STD[::-1]
  np.testing.assert_allclose(bgr, want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(augmentation.normalize(jnp.asarray(frames), 'imagenet',
                                                               'bgr', xp=jnp)), bgr, rtol=1e-5)
  assert augmentation.normalize(frames, 'none').dtype == np.uint8
  with pytest.raises(ValueError, match="normalization='imagenette'"):
    augmentation.normalize(frames, 'imagenette')


# --- batches ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def pipeline_parts(synthetic_signs_dir):
  config = video.default_config()
  config.update(data_dir=str(synthetic_signs_dir), crop_size=32, eval_resize=32,
                frame_buckets=(32, 48, 64, 96), length_buckets=(8, 16))
  config.update(mmtlb.DATA_RECIPE)
  train = video.open_split(config, 'train')
  tokenizer = WordTokenizer.build(train.texts, ['en_XX'])
  glosses = GlossVocabulary.build(train.glosses)
  return config, train, tokenizer, glosses


def loader_for(parts, split='train', train=True, process=(0, 1), **overrides):
  config, train_split, tokenizer, glosses = parts
  config = config.copy_and_resolve_references()
  config.update(overrides)
  data = train_split if split == 'train' else video.open_split(config, split)
  return video.VideoBatchLoader(data, config, tokenizer, glosses, 'en_XX', train, *process), data


def first_batches(dataset, n):
  iterator = iter(dataset)
  return [next(iterator) for _ in range(n)]


def test_batches_are_padded_with_the_last_frame_and_masked(pipeline_parts):
  loader, data = loader_for(pipeline_parts, normalization='none')
  plan = batching.train_plan(len(data), 4, seed=0)
  batch = next(iter(batching.make_dataset(plan, loader, 0, seed=1)))
  frames, mask = batch['frames'], batch['frame_mask']
  assert frames.dtype == np.uint8 and frames.shape[0] == 4 and frames.shape[2:] == (32, 32, 3)
  assert frames.shape[1] in (32, 48, 64, 96) and mask.shape == frames.shape[:2]
  lengths = mask.sum(1)
  assert lengths.max() > frames.shape[1] - 16 or frames.shape[1] == 32  # the smallest bucket
  for row, n in enumerate(lengths):
    assert n % 4 == 0  # MMTLB's training lengths
    assert np.all(mask[row, :n] == 1) and np.all(mask[row, n:] == 0)
    assert np.all(frames[row, n:] == frames[row, n - 1])  # repeated last frame
    gloss = data.glosses[batch['index'][row]].split()
    ids = batch['gloss_ids'][row, :batch['gloss_mask'][row].sum()]
    assert pipeline_parts[3].decode(ids) == ' '.join(gloss) and 0 not in ids
  assert pipeline_parts[3].decode([0, 5, 0]) == pipeline_parts[3].glosses[3]  # blank is 0
  tokenizer = pipeline_parts[2]
  assert tokenizer.decode(batch['labels'][0]) == data.texts[batch['index'][0]]


def collapse(ids) -> list[int]:
  """CTC's collapse of per-frame ids: repeats merged, blanks dropped."""
  return [int(i) for i, previous in zip(ids, [-1, *ids[:-1]]) if i != previous and i != 0]


def test_frame_glosses_follow_the_sampled_frames(pipeline_parts):
  """The index labels every frame (as the renderer signs it); batches carry the labels of the
  frames they sampled: all frames at eval, in sentence order and padded with blanks at train."""
  _, train_split, _, glosses = pipeline_parts
  ids = lambda line: [0 if g == '-' else glosses.encode(g)[0] for g in line.split()]
  for i in range(len(train_split)):
    assert len(train_split.frame_glosses[i].split()) == train_split.num_frames[i]
    assert collapse(ids(train_split.frame_glosses[i])) == glosses.encode(train_split.glosses[i])
  loader, data = loader_for(pipeline_parts, split='dev', train=False, frame_glosses=True)
  batch = next(iter(batching.make_dataset(batching.eval_plan(len(data), 4), loader, 0, seed=1)))
  for row, index in enumerate(batch['index']):
    n = batch['num_frames'][row]
    assert n == data.num_frames[index]  # every frame at eval
    np.testing.assert_array_equal(batch['frame_gloss_ids'][row, :n], ids(data.frame_glosses[index]))
  loader, data = loader_for(pipeline_parts, frame_glosses=True)
  batch = next(iter(batching.make_dataset(batching.train_plan(len(data), 4, seed=0), loader, 0,
                                          seed=3)))
  assert batch['frame_gloss_ids'].shape == batch['frame_mask'].shape
  for row, index in enumerate(batch['index']):
    ids = batch['frame_gloss_ids'][row]
    assert np.all(ids[batch['frame_mask'][row] == 0] == 0)  # padding is blank
    assert collapse(ids) == glosses.encode(data.glosses[index])
  assert 'frame_gloss_ids' not in next(iter(batching.make_dataset(
      batching.train_plan(len(data), 4, seed=0), loader_for(pipeline_parts)[0], 0, seed=3)))


def test_eval_batches_are_deterministic_and_normalised(pipeline_parts):
  loader, data = loader_for(pipeline_parts, split='dev', train=False)
  plan = batching.eval_plan(len(data), 4)
  first = list(batching.make_dataset(plan, loader, 0, seed=1))
  again = list(batching.make_dataset(plan, loader, 0, seed=2))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['frames'], b['frames'])
  assert first[0]['frames'].dtype == np.float32
  assert -1 <= first[0]['frames'].min() and first[0]['frames'].max() <= 1
  np.testing.assert_array_equal(first[0]['num_frames'], data.num_frames[first[0]['index']])
  assert list(first[-1]['index']).count(-1) == 2  # 6 dev videos in batches of 4


def test_iterator_restored_from_an_orbax_checkpoint_continues_exactly(pipeline_parts, tmp_path):
  loader, data = loader_for(pipeline_parts)
  plan = batching.train_plan(len(data), 4, seed=0)
  iterator = iter(batching.make_dataset(plan, loader, 0, seed=7))
  for _ in range(7):  # past the first epoch (6 batches)
    next(iterator)
  saver = checkpointing.Checkpointer(str(tmp_path), keep=1)
  saver.save(7, {'w': np.zeros(2, np.float32)}, iterator, {})
  saver.latest.wait_until_finished()
  expected = [next(iterator) for _ in range(2)]
  resumed = iter(batching.make_dataset(plan, loader, 0, seed=7))
  checkpointing.Checkpointer(str(tmp_path), keep=1).restore(
      {'w': np.zeros(2, np.float32)}, resumed)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize('process_count', [2, 4])
def test_processes_split_each_global_batch_and_agree_with_one_process(pipeline_parts,
                                                                      process_count):
  single, data = loader_for(pipeline_parts)
  plan = batching.train_plan(len(data), 8, seed=0)
  whole = first_batches(batching.make_dataset(plan, single, 0, seed=3), 3)
  parts = [first_batches(batching.make_dataset(
      plan, loader_for(pipeline_parts, process=(p, process_count))[0], 0, seed=3), 3)
           for p in range(process_count)]
  for step, batch in enumerate(whole):
    for key in ('frames', 'frame_mask', 'gloss_ids', 'labels', 'index'):
      np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), batch[key])


def test_eval_plan_shards_cover_every_example_exactly_once(pipeline_parts):
  seen = []
  for process in range(3):
    loader, data = loader_for(pipeline_parts, split='dev', train=False, process=(process, 3))
    for batch in batching.make_dataset(batching.eval_plan(len(data), 6), loader, 0):
      seen += [int(i) for i in batch['index'] if i >= 0]
  assert sorted(seen) == list(range(len(data)))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(pipeline_parts):
  loader, data = loader_for(pipeline_parts)
  plan = batching.train_plan(len(data), 4, seed=0)
  inline = first_batches(batching.make_dataset(plan, loader, 0, seed=5), 4)
  iterator = iter(batching.make_dataset(plan, loader, 2, seed=5))
  got = [next(iterator) for _ in range(2)]
  state = iterator.get_state()
  resumed = iter(batching.make_dataset(plan, loader, 2, seed=5))
  resumed.set_state(state)
  got += [next(resumed) for _ in range(2)]
  for a, b in zip(got, inline):
    np.testing.assert_array_equal(a['frames'], b['frames'])
    np.testing.assert_array_equal(a['index'], b['index'])


def test_missing_dataset_says_how_to_build_it(tmp_path):
  config = video.default_config()
  config.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='python -m sltjax.data.build '
                     f'--dataset=synthetic_signs --data_dir={tmp_path}'):
    video.open_split(config, 'train')


def test_a_damaged_stored_frame_names_the_clip():
  with pytest.raises(ValueError, match=r'phoenix2014t/dev x: stored frame 1 is not a decodable '
                     'JPEG; the dataset files are damaged'):
    video.decode_frames([cv2.imencode('.jpg', textured())[1].tobytes(), b'\xff\xd8junk'],
                        np.array([0, 1]), 'phoenix2014t/dev x')
