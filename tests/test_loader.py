"""Loader: action alignment against the spec's indexing, episode boundaries, determinism, corrupt shards."""

import numpy as np
import pytest
import torch

from dreamer4_libero.data.loader import WindowDataset, area_downsample, make_loader, window_actions
from dreamer4_libero.data.preprocess import preprocess

import faults
from conftest import write_libero_file


def _coded_episode(T: int, offset: float):
    """Frame k has a gray level of k; actions[k] = (offset + k) in every dim (|a| < 1 scaled)."""
    frames = np.zeros((T, 128, 128, 3), np.uint8)
    frames[:] = np.arange(T, dtype=np.uint8)[:, None, None, None]
    frames[:, :8] = 200  # a marker on the top rows: tests the upright flip too
    actions = np.repeat(((offset + np.arange(T)) / 1000.0)[:, None], 7, axis=1)
    return frames, actions


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    write_libero_file(root / "libero_10" / "coded_demo.hdf5", [_coded_episode(20, 0), _coded_episode(12, 500)])
    out = tmp_path_factory.mktemp("coded_pre")
    preprocess(root, out, min_demo_len=2, progress=False)
    return out


def test_window_actions_alignment_unit():
    raw = np.arange(10 * 7, dtype=np.float64).reshape(10, 7)
    act, mask = window_actions(raw, start=3, seq_len=4, action_dim=16)
    assert act.shape == mask.shape == (4, 16)
    assert np.all(act[0] == 0) and np.all(mask[0] == 0)  # block 0 is the null action
    np.testing.assert_array_equal(act[1:, :7], raw[4:7])  # block t carries raw actions[s+t]
    assert np.all(mask[1:, :7] == 1) and np.all(mask[:, 7:] == 0) and np.all(act[:, 7:] == 0)


def test_windows_pair_frames_with_the_actions_that_produced_them(coded):
    ds = WindowDataset(
        coded / "manifest.json",
        ["libero_10/coded/demo_0", "libero_10/coded/demo_1"],
        seq_len=5,
        batch_size=8,
        resolution=128,
        seed=0,
    )
    seen = 0
    for step in range(20):
        for ep, s in ds.starts_for_step(step):
            w = ds.window(ep, s)
            frames, act, mask = w["frames"], w["actions"], w["act_mask"]
            assert frames.shape == (5, 3, 128, 128)
            k = np.rint(frames[:, 0, 64, 64] * 255).astype(int)  # gray level = frame index in the episode
            np.testing.assert_array_equal(k, s + np.arange(5))
            assert np.allclose(frames[:, 0, :8, :], 200 / 255)  # upright: the marker is on top
            offset = 500 if ep.endswith("demo_1") else 0
            # the action token of block t (t >= 1) is raw actions[s+t]: the action that produced frame s+t
            np.testing.assert_allclose(act[1:, 0], (offset + k[1:]) / 1000.0, rtol=0, atol=1e-7)
            # a one-step shift (actions[s+t-1] or actions[s+t+1]) would fail the line above
            assert not np.allclose(act[1:, 0], (offset + k[1:] - 1) / 1000.0)
            assert np.all(act[0] == 0) and np.all(mask[0] == 0)
            seen += 1
    assert seen == 160


def test_windows_never_cross_episodes(coded):
    ds = WindowDataset(
        coded / "manifest.json",
        ["libero_10/coded/demo_0", "libero_10/coded/demo_1"],
        seq_len=12,
        batch_size=64,
        resolution=128,
        seed=3,
    )
    assert ds.n_windows == (20 - 12 + 1) + (12 - 12 + 1)
    for w in range(ds.n_windows):
        ep, s = ds.locate(w)
        T = 20 if ep.endswith("demo_0") else 12
        assert 0 <= s and s + 12 <= T
    # episodes shorter than seq_len are left out
    ds2 = WindowDataset(
        coded / "manifest.json",
        ["libero_10/coded/demo_0", "libero_10/coded/demo_1"],
        seq_len=13,
        batch_size=4,
        resolution=128,
    )
    assert ds2.episode_ids == ["libero_10/coded/demo_0"]


def test_area_downsample_is_block_mean():
    x = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    y = area_downsample(x, 32)
    assert y.shape == (2, 32, 32, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y[1, 5, 7], x[1, 20:24, 28:32].reshape(-1, 3).mean(0) / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="integer factor"):
        area_downsample(x, 48)


def test_stream_is_deterministic_and_resumable(preprocessed, test_cfg):
    kw = dict(seq_len=32, batch_size=4, resolution=test_cfg["data"]["model_resolution"], seed=7)
    split = preprocessed / "splits" / "train.json"
    a = WindowDataset(preprocessed / "manifest.json", split, rank=0, **kw)
    full = [b for b in make_loader(a, 0, 6, num_workers=2)]
    resumed = [b for b in make_loader(a, 3, 6, num_workers=0)]
    assert [b["step"] for b in full] == list(range(6))
    for x, y in zip(full[3:], resumed):
        assert torch.equal(x["frames"], y["frames"]) and torch.equal(x["actions"], y["actions"])
    assert full[0]["frames"].shape == (4, 32, 3, 32, 32)
    other_rank = WindowDataset(preprocessed / "manifest.json", split, rank=1, **kw)
    assert a.starts_for_step(0) != other_rank.starts_for_step(0)
    assert a.starts_for_step(0) != a.starts_for_step(1)


def test_loader_does_not_touch_the_global_torch_rng(preprocessed, test_cfg):
    """A DataLoader draws its base seed from the global RNG unless it has its own generator; that
    draw would shift MAE masks / dropout of a resumed run against an uninterrupted one."""
    ds = WindowDataset(
        preprocessed / "manifest.json",
        preprocessed / "splits" / "train.json",
        seq_len=8,
        batch_size=2,
        resolution=test_cfg["data"]["model_resolution"],
        seed=0,
    )
    torch.manual_seed(123)
    before = torch.get_rng_state()
    next(iter(make_loader(ds, 5, 10)))
    assert torch.equal(torch.get_rng_state(), before)


_SHARD_FAULTS = {
    "truncated_frames": "a training shard's frames.npy cut short (last 10% missing)",
    "garbage_npy_header": "random bytes over a training shard's actions.npy header",
    "garbage_episodes_json": "a training shard's episodes.json replaced by random bytes",
}


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            h,
            marks=pytest.mark.fault(
                fault=_SHARD_FAULTS[h], guarantee="opening the data raises ShardError naming the file"
            ),
        )
        for h in faults.SHARD_DAMAGE
    ],
)
def test_corrupt_shard_raises_naming_the_file(preprocessed, test_cfg, tmp_path, how):
    from dreamer4_libero.data.shards import ShardError

    bad = faults.corrupt_shard_copy(preprocessed, tmp_path / "pre", how)
    with pytest.raises(ShardError, match="corrupt shard file") as err:
        WindowDataset(
            tmp_path / "pre" / "manifest.json",
            tmp_path / "pre" / "splits" / "train.json",
            seq_len=4,
            batch_size=2,
            resolution=32,
        )
    assert str(err.value).startswith(f"{bad}: "), str(err.value)
