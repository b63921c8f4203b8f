"""Chunked tokenizer encoding: a world model's window encoded as independent chunks (issue 27).

The tokenizer is causal in time and its time positions are window-relative, so a frame's latent
depends on where its encoded window starts. A tokenizer trained on windows of `seq_len` frames
sees positions 0..seq_len-1 only; encoding a 32-frame world-model window in one call asks it for
positions it never saw. `tokenizer_chunk` (a key of the world-model runs) chooses instead:

- `None`: the whole window in one encoder call (the published behaviour, the default);
- an int c: frames [0, c), [c, 2c), ... of the window each encoded as their own window (positions
  restart at 0 in every chunk); a last shorter chunk when c does not divide T; c >= T = one call;
- `"train"`: c = the frozen tokenizer's own training seq_len (its checkpoint's args).

Decoding uses the same chunks. Full chunks run as one batched call ((B*n, c, ...)); the results equal
per-chunk calls up to float round-off of the larger batch.
"""

from __future__ import annotations

import torch

from .upstream import read_checkpoint

#: train_tokenizer.py default seq_len: the training window of a checkpoint whose args do not say
UPSTREAM_TOKENIZER_SEQ_LEN = 8


def tokenizer_train_seq_len(tok_path: str) -> tuple[int, str]:
    """(training seq_len, where it came from) of a tokenizer checkpoint: its args, else upstream's default."""
    _, args, _ = read_checkpoint(tok_path, keys=("model", "tokenizer", "state_dict"))
    if args.get("seq_len"):
        return int(args["seq_len"]), "checkpoint args"
    return UPSTREAM_TOKENIZER_SEQ_LEN, "upstream train_tokenizer default (not in the checkpoint's args)"


def resolve_chunk(setting, tok_path: str | None = None, where: str = "tokenizer_chunk") -> int | None:
    """The chunk length of a `tokenizer_chunk` setting: None (whole window), an int >= 1, or "train"."""
    if setting is None:
        return None
    if setting == "train":
        if tok_path is None:
            raise ValueError(f"{where}: 'train' needs the tokenizer checkpoint to read its training seq_len")
        return tokenizer_train_seq_len(tok_path)[0]
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"{where}: expected null, a positive integer or \"train\", got {setting!r}")
    return int(setting)


def _chunked(fn, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Apply fn ((b,t,...) -> (b,t,...)) to time chunks of x (B,T,...) independently; concatenated on T."""
    B, T = x.shape[:2]
    if chunk is None or chunk >= T:
        return fn(x)
    n, rest = divmod(T, chunk)
    full = x[:, : n * chunk].reshape(B * n, chunk, *x.shape[2:])  # (B*n, c, ...)
    y = fn(full)
    y = y.reshape(B, n * chunk, *y.shape[2:])  # (B, n*c, ...)
    if rest:
        y = torch.cat([y, fn(x[:, n * chunk :])], dim=1)  # last shorter chunk
    return y


def encode_chunked(tokenizer, frames: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """frames (B,T,C,H,W) in [0,1] -> z (B,T,L,Db), each chunk of `chunk` frames its own window (no MAE)."""
    return _chunked(lambda f: tokenizer.encode(f, mae=False), frames, chunk)


def decode_chunked(tokenizer, z: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """z (B,T,L,Db) -> frames (B,T,C,H,W) in (0,1), decoded in the same chunks as encode_chunked."""
    return _chunked(tokenizer.decode, z, chunk)
