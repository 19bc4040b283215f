"""A PyTorch stand-in for TRL's FA3 tree-attention kernel, for the asynchronous trainer on CPU.

TRL 1.16's asynchronous GRPO packs a group's completions as a prefix tree and registers a
FlashAttention-3 varlen kernel under ``trl.experimental.async_grpo``'s ``TREE_ATTENTION`` name; FA3
needs CUDA. :class:`~adaclip_rl.trainers.async_grpo.AdaClipAsyncGRPOTrainer` registers
:func:`cpu_tree_attention` under that name instead when the trainer runs off CUDA. Tests compare
it with plain causal attention over each root-to-leaf path.
"""

from __future__ import annotations

import torch

__all__ = ["cpu_tree_attention"]


def cpu_tree_attention(module, query, key, value, attention_mask, *, tree_kv_index, tree_cu_seqlens_q,
                       tree_cu_seqlens_k, tree_max_seqlen_q=None, tree_max_seqlen_k=None, scaling=None,
                       sliding_window=None, softcap=None, **kwargs):
    """PyTorch version of TRL's tree attention (``packing.tree_attention``, FA3 varlen) for CPU.

    Segment ``s`` (queries ``cu_q[s]:cu_q[s+1]`` of the packed row) attends to the keys/values
    gathered along its root-to-segment path (``tree_kv_index[cu_k[s]:cu_k[s+1]]``), causally with
    flash-attention's bottom-right alignment (the last query sees every key of its path).
    ``query``/``key``/``value``: ``(1, H, N, D)``; returns ``((1, N, H, D), None)``.
    """
    q = query.transpose(1, 2)[0]  # (N, Hq, D)
    k = key.transpose(1, 2)[0].index_select(0, tree_kv_index)
    v = value.transpose(1, 2)[0].index_select(0, tree_kv_index)
    if q.shape[1] != k.shape[1]:  # grouped-query attention
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    cu_q, cu_k = tree_cu_seqlens_q.tolist(), tree_cu_seqlens_k.tolist()
    outs = []
    for s in range(len(cu_q) - 1):
        qs, ks, vs = q[cu_q[s]:cu_q[s + 1]], k[cu_k[s]:cu_k[s + 1]], v[cu_k[s]:cu_k[s + 1]]
        nq, nk = qs.shape[0], ks.shape[0]
        qpos = torch.arange(nq, device=q.device)[:, None] + (nk - nq)
        kpos = torch.arange(nk, device=q.device)[None, :]
        allowed = kpos <= qpos
        if sliding_window:
            allowed = allowed & (kpos > qpos - sliding_window)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs.to(vs.dtype), vs))
    return torch.cat(outs).unsqueeze(0), None
