"""Dense-feature methods: GCLIP and its training-free peers on one code path.

Every method shares blocks ``0 .. depth-2`` of the backbone and differs in the last block, as
written in ``docs/gclip-method.md``. Functions here are pure and differentiable (the demo
model is trained through them); caching lives in :mod:`gclip.segmenter`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F

from gclip.backbone import VisionBackbone
from gclip.config import METHODS, MethodConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChannelSuppression:
    """Per-block suppressed copies of ``mlp.c_proj.weight`` (the wrapped model is untouched).

    Attributes:
        weights: block index -> ``D x 4D`` weight whose outlier output row is re-normalised.
        rows: block index -> the suppressed row r*.
    """

    weights: Mapping[int, torch.Tensor] = field(default_factory=dict)
    rows: Mapping[int, int] = field(default_factory=dict)


def suppress_outlier_row(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Scale the largest-norm row of ``weight`` (``D x 4D``) to the mean norm of the others.

    Returns:
        A new ``D x 4D`` tensor (``weight`` is not modified) and the row index r*.
    """
    norms = weight.float().norm(dim=1)  # D
    row = int(norms.argmax())
    others = torch.cat([norms[:row], norms[row + 1 :]])  # D-1
    scale = others.mean() / norms[row]
    scaled = weight.clone()
    scaled[row] = weight[row] * scale.to(weight.dtype)
    return scaled, row


def channel_suppression(backbone: VisionBackbone, config: MethodConfig) -> ChannelSuppression:
    """Channel Suppression weights for every block from ``config.cs_start_block`` on, up to the
    block before the last (GCLIP's last block drops its FFN, so its weight is never used)."""
    if not config.uses_channel_suppression:
        return ChannelSuppression()
    assert config.cs_start_block is not None, "resolve the config before computing CS"
    weights, rows = {}, {}
    for index in range(config.cs_start_block, backbone.depth - 1):
        weights[index], rows[index] = suppress_outlier_row(backbone.ffn_out_weight(index))
    return ChannelSuppression(weights=weights, rows=rows)


def dense_features(
    backbone: VisionBackbone,
    config: MethodConfig,
    images: torch.Tensor,
    suppression: ChannelSuppression | None = None,
) -> torch.Tensor:
    """Per-patch embeddings of ``images`` under ``config``'s method.

    Args:
        backbone: the wrapped vision tower.
        config: a resolved config (``global_blocks`` a tuple for ``gclip``).
        images: ``B x 3 x H x W`` normalised; H and W multiples of the patch size.
        suppression: Channel Suppression weights; required when the config uses CS.

    Returns:
        ``B x H/p x W/p x E`` patch embeddings, L2-normalised along E.
    """
    b, _, h, w = images.shape
    gh, gw = h // backbone.patch_size, w // backbone.patch_size
    ffn_weights = suppression.weights if suppression is not None else {}
    if config.uses_channel_suppression and not ffn_weights:
        raise ValueError("Channel Suppression is enabled but no suppressed weights were given.")

    # 1. Tokens, then blocks 0..depth-2, recording the attention of the global blocks.
    x = backbone.embed(images)  # B x L x D
    recorded: list[torch.Tensor] = []
    for index in range(backbone.depth - 1):
        x, attention = _run_block(backbone, index, x, ffn_weights.get(index), config, recorded)
        if attention is not None:
            recorded.append(attention)

    # 2. The method's last block, then drop CLS and project.
    x = _last_block(backbone, config, x, recorded, (gh, gw))  # B x L x D
    tokens = backbone.head(x[:, 1:])  # B x gh*gw x E
    return F.normalize(tokens.float(), dim=-1).reshape(b, gh, gw, -1)  # B x gh x gw x E


def _run_block(
    backbone: VisionBackbone,
    index: int,
    x: torch.Tensor,
    ffn_weight: torch.Tensor | None,
    config: MethodConfig,
    recorded: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if index in config.recorded_blocks:
        q, k, v = backbone.qkv(index, x)  # B x H x L x d
        attn = torch.softmax(
            backbone.attention_scale * q @ k.transpose(-2, -1), dim=-1
        )  # B x H x L x L
        attn_out = backbone.attention_output(index, attn @ v)  # B x L x D
        kept = attn.mean(dim=1, keepdim=True) if config.head_average else attn  # B x (1|H) x L x L
        return backbone.finish_block(index, x, attn_out, ffn_weight), kept
    if ffn_weight is not None:
        return backbone.finish_block(
            index, x, backbone.native_attention(index, x), ffn_weight
        ), None
    return backbone.run_block(index, x), None


def _last_block(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    attn_out = LAST_BLOCKS[config.name](backbone, config, x, recorded, grid_hw)  # B x L x D
    if config.spec.keeps_residual:
        return backbone.finish_block(backbone.depth - 1, x, attn_out)  # B x L x D
    return attn_out


# The peers' attention is a softmax of logits times v: PyTorch's fused attention computes it
# without materialising L x L maps. GCLIP's fused maps must exist, so it builds them.
def _clip_attention(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    return backbone.native_attention(backbone.depth - 1, x)  # B x L x D


def _maskclip_attention(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    _, _, v = backbone.qkv(backbone.depth - 1, x)  # B x H x L x d
    return backbone.attention_output(backbone.depth - 1, v)  # B x L x D: identity attention


def _clearclip_attention(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    q, _, v = backbone.qkv(backbone.depth - 1, x)  # B x H x L x d
    # softmax(s q q^T) v
    out = F.scaled_dot_product_attention(q, q, v, scale=backbone.attention_scale)  # B x H x L x d
    return backbone.attention_output(backbone.depth - 1, out)  # B x L x D


def _sclip_attention(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    q, k, v = backbone.qkv(backbone.depth - 1, x)  # B x H x L x d
    attend, scale = F.scaled_dot_product_attention, backbone.attention_scale
    # softmax(s q q^T) v + softmax(s k k^T) v: the attention's rows sum to 2
    out = attend(q, q, v, scale=scale) + attend(k, k, v, scale=scale)  # B x H x L x d
    return backbone.attention_output(backbone.depth - 1, out)  # B x L x D


def _naclip_attention(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    q, k, v = backbone.qkv(backbone.depth - 1, x)  # B x H x L x d
    omega = neighbourhood_bias(grid_hw, config.naclip_sigma, q.device, q.dtype)  # L x L
    # softmax(s k k^T + omega) v
    out = F.scaled_dot_product_attention(
        k, k, v, attn_mask=omega, scale=backbone.attention_scale
    )  # B x H x L x d
    return backbone.attention_output(backbone.depth - 1, out)  # B x L x D


def _gclip_attention(
    backbone: VisionBackbone,
    config: MethodConfig,
    x: torch.Tensor,
    recorded: Sequence[torch.Tensor],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    q, _, v = backbone.qkv(backbone.depth - 1, x)  # B x H x L x d
    qq_logits = backbone.attention_scale * q @ q.transpose(-2, -1)  # B x H x L x L
    attn = fused_attention(qq_logits, recorded, config.head_average)  # B x (1|H) x L x L
    out = attn @ v  # B x (1|H) x L x L @ B x H x L x d -> B x H x L x d
    return backbone.attention_output(backbone.depth - 1, out)  # B x L x D


LastBlockAttention = Callable[
    [VisionBackbone, MethodConfig, torch.Tensor, Sequence[torch.Tensor], tuple[int, int]],
    torch.Tensor,
]

# Each method's last-block attention, by name: ``B x L x D`` tokens entering the last block
# -> ``B x L x D`` attention output (after ``out_proj``, before the residual that
# ``MethodSpec.keeps_residual`` adds). Its keys are ``gclip.config.METHODS``, checked below.
LAST_BLOCKS: Mapping[str, LastBlockAttention] = MappingProxyType(
    {
        "gclip": _gclip_attention,
        "clearclip": _clearclip_attention,
        "naclip": _naclip_attention,
        "sclip": _sclip_attention,
        "maskclip": _maskclip_attention,
        "clip": _clip_attention,
    }
)
if set(LAST_BLOCKS) != set(METHODS):
    raise ImportError(
        f"gclip.methods.LAST_BLOCKS covers {sorted(LAST_BLOCKS)} but gclip.config.METHOD_SPECS "
        f"lists {sorted(METHODS)}: give every registered method its last-block function."
    )


def fused_attention(
    qq_logits: torch.Tensor, recorded: Sequence[torch.Tensor], head_average: bool
) -> torch.Tensor:
    """Attention Map Fusion: the plain mean of ``softmax(qq)`` and the global blocks' maps.

    Args:
        qq_logits: ``B x H x L x L`` scaled query-query logits of the last block.
        recorded: the global blocks' maps, each ``B x 1 x L x L`` (head-averaged) or
            ``B x H x L x L``.
        head_average: average ``softmax(qq)`` over heads as well.

    Returns:
        ``B x (1|H) x L x L`` attention whose rows sum to 1.
    """
    attn_qq = torch.softmax(qq_logits, dim=-1)  # B x H x L x L
    if head_average:
        attn_qq = attn_qq.mean(dim=1, keepdim=True)  # B x 1 x L x L
    return (attn_qq + sum(recorded)) / (1 + len(recorded))


def neighbourhood_bias(
    grid_hw: tuple[int, int], sigma: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """NACLIP's Gaussian bias ``Omega``: ``L x L`` over patch-grid positions, 0 on CLS row/col."""
    gh, gw = grid_hw
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()  # gh*gw x 2 (row, col)
    dist2 = torch.cdist(pos, pos).pow(2)  # gh*gw x gh*gw
    omega = torch.zeros(gh * gw + 1, gh * gw + 1)  # L x L
    omega[1:, 1:] = torch.exp(-dist2 / (2 * sigma**2))
    return omega.to(device=device, dtype=dtype)


def attention_maps(backbone: VisionBackbone, images: torch.Tensor) -> list[torch.Tensor]:
    """Head-averaged ``softmax(s q k^T)`` of blocks ``0 .. depth-2`` under the plain forward.

    Returns:
        ``depth - 1`` tensors, each ``B x L x L``; rows sum to 1.
    """
    x = backbone.embed(images)  # B x L x D
    maps = []
    for index in range(backbone.depth - 1):
        q, k, _ = backbone.qkv(index, x)  # B x H x L x d
        attn = torch.softmax(backbone.attention_scale * q @ k.transpose(-2, -1), dim=-1)
        maps.append(attn.mean(dim=1))  # B x L x L
        x = backbone.run_block(index, x)  # B x L x D
    return maps


def find_global_blocks(
    backbone: VisionBackbone, images: torch.Tensor, ratio: float = 10.0, fraction: float = 0.5
) -> tuple[int, ...]:
    """Detect the first block where a global token emerges; return it and the next block.

    A token is global in an image when the attention mass it receives, averaged over patch
    rows, is at least ``ratio`` times the uniform mass ``1/L``; a block qualifies when that holds
    in more than ``fraction`` of the images. With no qualifying block, the two middle blocks are
    used and a warning is logged.
    """
    maps = attention_maps(backbone, images)
    last_candidate = backbone.depth - 2
    if last_candidate < 1:  # a 2-block model has a single block before the last one
        return (0,)
    for index, attn in enumerate(maps):
        tokens = attn.shape[-1]
        received = attn[:, 1:, :].mean(dim=1)  # B x L: mass per key, mean over patch rows
        peak_ratio = received.max(dim=1).values * tokens  # B
        if (peak_ratio >= ratio).float().mean().item() > fraction:
            first = min(index, last_candidate - 1)
            log.info(
                "global tokens emerge at block %d; fusing blocks (%d, %d)", index, first, first + 1
            )
            return first, first + 1
    middle = max(0, min(backbone.depth // 2, last_candidate - 1))
    log.warning(
        "no block with a global token (ratio >= %.1f) found; falling back to blocks (%d, %d)",
        ratio,
        middle,
        middle + 1,
    )
    return middle, middle + 1
