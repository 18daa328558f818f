"""The composition seam over open_clip's VisionTransformer.

This is the only module that names open_clip internals (``transformer.resblocks``, ``ln_1``,
``attn.in_proj_weight``, ``mlp.c_proj``, ``ln_post``, ``proj``, ...). Everything else in
``gclip`` talks to a :class:`VisionBackbone`, which reads the frozen weights of the wrapped model
and never writes them. Tensors are batch-first: ``B x L x D`` with the CLS token at index 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer


class UnsupportedBackboneError(ValueError):
    """The open_clip vision tower has a shape this library cannot wrap."""


class VisionBackbone:
    """Read-only view of an open_clip ViT: patch embedding, blocks, and the output head.

    Args:
        visual: ``model.visual`` of an open_clip ``CLIP``; a plain ViT with a CLS token, no
            attentional pooler, and standard ``ResidualAttentionBlock`` blocks.
    """

    def __init__(self, visual: Any) -> None:
        _check_supported(visual)
        self._visual: Any = visual
        self._blocks: list[Any] = list(visual.transformer.resblocks)
        patch_h, patch_w = visual.patch_size
        if patch_h != patch_w:
            raise UnsupportedBackboneError(
                f"Non-square patches {visual.patch_size} are not supported."
            )
        self.patch_size: int = int(patch_h)
        self.depth: int = len(self._blocks)
        self.width: int = int(visual.transformer.width)
        self.num_heads: int = int(self._blocks[0].attn.num_heads)
        self.head_dim: int = self.width // self.num_heads
        self.output_dim: int = int(visual.proj.shape[1])
        self.pretrained_grid: tuple[int, int] = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        self._pos_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        device: torch.device = self._visual.conv1.weight.device
        return device

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self._visual.conv1.weight.dtype
        return dtype

    # ---- input side -------------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed normalised images into transformer tokens.

        Args:
            images: ``B x 3 x H x W`` float, normalised; H, W multiples of ``patch_size``.

        Returns:
            ``B x (1 + gh*gw) x D`` tokens after positional embedding and ``ln_pre``.
        """
        v = self._visual
        b, _, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"Image size {h}x{w} is not a multiple of the patch size {self.patch_size}; "
                "pad or resize the crops first."
            )
        gh, gw = h // self.patch_size, w // self.patch_size
        x = v.conv1(images.to(self.dtype))  # B x D x gh x gw
        x = x.flatten(2).transpose(1, 2)  # B x gh*gw x D
        cls = v.class_embedding.to(x.dtype).expand(b, 1, -1)  # B x 1 x D
        x = torch.cat([cls, x], dim=1)  # B x L x D
        x = x + self.positional_embedding(gh, gw).to(x.dtype)  # B x L x D
        return v.ln_pre(x)  # B x L x D

    def positional_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """``(1 + gh*gw) x D`` positional embedding, patch part resampled bicubically to the grid."""
        pos = self._visual.positional_embedding  # (1 + G0h*G0w) x D
        if (gh, gw) == self.pretrained_grid:
            return pos
        # Cached only outside autograd: a cached tensor must not carry a training graph.
        key = (gh, gw, pos.dtype, pos.device)
        if key in self._pos_cache and not torch.is_grad_enabled():
            return self._pos_cache[key]
        g0h, g0w = self.pretrained_grid
        cls_pos, patch_pos = pos[:1], pos[1:]  # 1 x D, G0h*G0w x D
        grid = patch_pos.reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2)  # 1 x D x G0h x G0w
        grid = F.interpolate(
            grid.float(), size=(gh, gw), mode="bicubic", align_corners=False, antialias=False
        )  # 1 x D x gh x gw
        patch_pos = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)  # gh*gw x D
        resampled = torch.cat([cls_pos, patch_pos], dim=0)  # L x D
        if not torch.is_grad_enabled():
            self._pos_cache[key] = resampled
        return resampled

    # ---- blocks -----------------------------------------------------------------------------

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """open_clip's own forward of block ``index``: ``B x L x D -> B x L x D``."""
        return self._blocks[index](x)

    def qkv(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head query, key and value of block ``index`` from its ``ln_1`` input.

        Args:
            x: ``B x L x D`` tokens entering the block.

        Returns:
            q, k, v, each ``B x H x L x d`` (not scaled).
        """
        block = self._blocks[index]
        u = block.ln_1(x)  # B x L x D
        qkv = F.linear(u, block.attn.in_proj_weight, block.attn.in_proj_bias)  # B x L x 3D
        b, n, _ = qkv.shape
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each B x H x L x d

    def attention_output(self, index: int, heads_out: torch.Tensor) -> torch.Tensor:
        """Concatenate per-head outputs and apply block ``index``'s ``out_proj``.

        Args:
            heads_out: ``B x H x L x d`` (attention-weighted values).

        Returns:
            ``B x L x D``, before layer scale and residual.
        """
        b, _, n, _ = heads_out.shape
        o = heads_out.transpose(1, 2).reshape(b, n, self.width)  # B x L x D
        out_proj = self._blocks[index].attn.out_proj
        return F.linear(o, out_proj.weight, out_proj.bias)  # B x L x D

    def finish_block(
        self,
        index: int,
        x: torch.Tensor,
        attn_out: torch.Tensor,
        ffn_out_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Residual + FFN half of block ``index`` given its attention output.

        Args:
            x: ``B x L x D`` tokens that entered the block.
            attn_out: ``B x L x D`` from :meth:`attention_output` or ``block.attention``.
            ffn_out_weight: ``D x 4D`` replacement for ``mlp.c_proj.weight`` (its bias is
                kept); ``None`` uses the block's own weight.

        Returns:
            ``B x L x D`` tokens leaving the block.
        """
        block = self._blocks[index]
        x = x + block.ls_1(attn_out)  # B x L x D
        mlp = block.mlp
        h = mlp.gelu(mlp.c_fc(block.ln_2(x)))  # B x L x 4D
        weight = mlp.c_proj.weight if ffn_out_weight is None else ffn_out_weight
        return x + block.ls_2(F.linear(h, weight, mlp.c_proj.bias))  # B x L x D

    def native_attention(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``index``'s own multi-head attention of ``ln_1(x)``: ``B x L x D``."""
        block = self._blocks[index]
        return block.attention(q_x=block.ln_1(x))

    def ffn_out_weight(self, index: int) -> torch.Tensor:
        """``D x 4D`` weight of block ``index``'s ``mlp.c_proj`` (read only: never write to it)."""
        return self._blocks[index].mlp.c_proj.weight

    # ---- output side ------------------------------------------------------------------------

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: ``B x L x D -> B x L x E`` (not normalised)."""
        return self._visual.ln_post(x) @ self._visual.proj

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)


def _check_supported(visual: Any) -> None:
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedBackboneError(
            f"Expected an open_clip VisionTransformer as model.visual, got {type(visual).__name__}; "
            "timm and ResNet towers have no ViT attention to reshape. Pick a ViT model "
            "(e.g. ViT-B-16)."
        )
    if visual.attn_pool is not None or visual.final_ln_after_pool:
        raise UnsupportedBackboneError(
            "Vision towers with an attentional pooler or post-pool LayerNorm are not supported."
        )
    if visual.proj is None:
        raise UnsupportedBackboneError("The vision tower has no output projection (proj is None).")
    if not visual.transformer.batch_first:
        raise UnsupportedBackboneError("Only batch-first open_clip transformers are supported.")
    for block in visual.transformer.resblocks:
        if type(block) is not ResidualAttentionBlock:
            raise UnsupportedBackboneError(
                f"Block type {type(block).__name__} is not supported; only the standard "
                "ResidualAttentionBlock (CLIP, OpenCLIP, EVA-free ViTs) is."
            )
