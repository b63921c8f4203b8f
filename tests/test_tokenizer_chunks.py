"""Chunked tokenizer encoding (models/tokenizer_chunks.py, issue 27): per-chunk = independent windows."""

import pytest
import torch

from dreamer4_libero.models.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_libero.models.tokenizer_chunks import (
    UPSTREAM_TOKENIZER_SEQ_LEN,
    decode_chunked,
    encode_chunked,
    resolve_chunk,
    tokenizer_train_seq_len,
)
from dreamer4_libero.models.upstream import save_upstream_tokenizer_checkpoint, upstream_tokenizer_args


def _tok():
    torch.manual_seed(0)
    return Tokenizer(
        TokenizerConfig(
            H=16,
            W=16,
            patch=4,
            d_model=32,
            n_heads=2,
            depth=2,
            n_latents=4,
            d_bottleneck=8,
            dropout=0.0,
            mae_p_min=0.0,
            mae_p_max=0.0,
        )
    ).eval()


def _frames(B=2, T=7):
    return torch.rand(B, T, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("chunk", [1, 2, 3])
@torch.no_grad()
def test_chunked_equals_per_chunk_calls(chunk):
    tok, x = _tok(), _frames(T=7)  # 7 = 2 full chunks of 3 + a rest of 1
    z = encode_chunked(tok, x, chunk)
    assert z.shape == (2, 7, 4, 8)
    ref = torch.cat([tok.encode(x[:, s : s + chunk], mae=False) for s in range(0, 7, chunk)], dim=1)
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-6)
    y = decode_chunked(tok, z, chunk)
    assert y.shape == x.shape
    ref_y = torch.cat([tok.decode(ref[:, s : s + chunk]) for s in range(0, 7, chunk)], dim=1)
    torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-6)


@torch.no_grad()
def test_chunk_at_least_the_window_is_one_call_and_chunks_differ_from_it():
    tok, x = _tok(), _frames(T=6)
    whole = tok.encode(x, mae=False)
    for c in (None, 6, 100):
        assert torch.equal(encode_chunked(tok, x, c), whole)
        assert torch.equal(decode_chunked(tok, whole, c), tok.decode(whole))
    z2 = encode_chunked(tok, x, 2)
    assert torch.equal(z2[:, :2], encode_chunked(tok, x[:, :2], None))  # causal: the first chunk is unchanged
    assert (z2[:, 2:] - whole[:, 2:]).abs().max() > 1e-4  # later frames: positions restart


def test_resolve_chunk_and_train_seq_len(tmp_path):
    tok = _tok()
    with_len = tmp_path / "a.pt"
    save_upstream_tokenizer_checkpoint(with_len, tok, args={**upstream_tokenizer_args(tok.cfg), "seq_len": 4})
    without = tmp_path / "b.pt"
    args = upstream_tokenizer_args(tok.cfg)
    args.pop("seq_len", None)
    save_upstream_tokenizer_checkpoint(without, tok, args=args)
    assert tokenizer_train_seq_len(str(with_len)) == (4, "checkpoint args")
    assert tokenizer_train_seq_len(str(without))[0] == UPSTREAM_TOKENIZER_SEQ_LEN == 8
    assert resolve_chunk(None, str(with_len)) is None
    assert resolve_chunk(5) == 5
    assert resolve_chunk("train", str(with_len)) == 4
    for bad in (0, -2, "whole", 2.0, True):
        with pytest.raises(ValueError, match="tokenizer_chunk"):
            resolve_chunk(bad, str(with_len))
    with pytest.raises(ValueError, match="training seq_len"):
        resolve_chunk("train", None)


@torch.no_grad()
def test_dynamics_task_encodes_training_windows_in_the_runs_chunks(preprocessed, tmp_path):
    """Training (training/dynamics_task.py): "train" = the tokenizer's seq_len, recorded resolved in the args."""
    from dreamer4_libero.config import demo_config, dynamics_variants
    from dreamer4_libero.models.dynamics import pack_latents
    from dreamer4_libero.training.dynamics_task import DynamicsTask

    torch.manual_seed(0)
    tok = Tokenizer(
        TokenizerConfig(H=32, W=32, patch=8, d_model=32, n_heads=2, depth=1, n_latents=4, d_bottleneck=8, dropout=0.0)
    )
    path = tmp_path / "tok.pt"
    save_upstream_tokenizer_checkpoint(path, tok, args={**upstream_tokenizer_args(tok.cfg), "seq_len": 4})
    run = dynamics_variants(demo_config(test=True))["dynamics_phase3"]
    run.update(model={**run["model"], "d_model": 32, "depth": 1, "n_heads": 2}, seq_len=8, batch_size=2, num_workers=0)
    kw = dict(
        manifest=str(preprocessed / "manifest.json"),
        train_split=str(preprocessed / "splits" / "train.json"),
        tokenizer_ckpt=str(path),
    )
    default = DynamicsTask({**run, "tokenizer_chunk": None}, **kw)
    chunked = DynamicsTask({**run, "tokenizer_chunk": "train"}, **kw)
    assert default.tok_chunk is None and default.upstream_args()["tokenizer_chunk"] is None
    assert chunked.tok_chunk == 4 and chunked.upstream_args()["tokenizer_chunk"] == 4
    x = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    z = chunked.encode(x)
    assert z.shape == (2, 8, 2, 16)  # packed: 4 latents x 8 -> 2 x 16
    ref = torch.cat([default.tokenizer.encode(x[:, s : s + 4], mae=False) for s in (0, 4)], dim=1)
    torch.testing.assert_close(z, pack_latents(ref, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        default.encode(x), pack_latents(default.tokenizer.encode(x, mae=False), 2), rtol=0, atol=0
    )
    assert (default.encode(x)[:, 4:] - z[:, 4:]).abs().max() > 1e-4
    assert default.identity_inputs() == chunked.identity_inputs()  # the chunk enters via the config
