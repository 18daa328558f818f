"""Every method against an independent computation written here from the method file's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gclip import METHODS, Segmenter
from gclip.backbone import UnsupportedBackboneError, VisionBackbone
from gclip.methods import attention_maps, find_global_blocks, fused_attention, suppress_outlier_row

# ---- an independent reference forward, from raw weights only --------------------------------


def ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def heads(t, h):
    b, n, d = t.shape
    return t.view(b, n, h, d // h).transpose(1, 2)  # B x H x L x d


def project_qkv(block, x, h):
    w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
    u = ln(x, block.ln_1)
    q, k, v = (u @ w.T + bias).chunk(3, dim=-1)
    return heads(q, h), heads(k, h), heads(v, h)


def merge(o):
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


def ffn(block, x, c_proj_weight=None):
    w = block.mlp.c_proj.weight if c_proj_weight is None else c_proj_weight
    hidden = block.mlp.gelu(ln(x, block.ln_2) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
    return hidden @ w.T + block.mlp.c_proj.bias


def ref_block(block, x, h, c_proj_weight=None):
    q, k, v = project_qkv(block, x, h)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    x = x + merge(a @ v) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    return x + ffn(block, x, c_proj_weight), a


def ref_tokens(visual, images):
    p = visual.patch_size[0]
    b, _, hh, ww = images.shape
    gh, gw = hh // p, ww // p
    patches = images.unfold(2, p, p).unfold(3, p, p)  # B x 3 x gh x gw x p x p
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, gh * gw, -1)
    x = patches @ visual.conv1.weight.reshape(visual.conv1.weight.shape[0], -1).T
    pos = visual.positional_embedding
    g0 = visual.grid_size
    if (gh, gw) != tuple(g0):
        grid = pos[1:].reshape(1, g0[0], g0[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    x = torch.cat([visual.class_embedding.expand(b, 1, -1), x], dim=1) + pos
    return ln(x, visual.ln_pre), (gh, gw)


def reference_dense(
    model, images, method, global_blocks=(6, 7), cs_start=7, cs=True, head_average=True, sigma=5.0
):
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    h = blocks[0].attn.num_heads
    x, (gh, gw) = ref_tokens(visual, images)
    recorded = []
    for i, block in enumerate(blocks[:-1]):
        w = None
        if method == "gclip" and cs and i >= cs_start:
            w = block.mlp.c_proj.weight.clone()
            norms = w.norm(dim=1)
            r = norms.argmax()
            w[r] *= (norms.sum() - norms[r]) / (len(norms) - 1) / norms[r]
        x, a = ref_block(block, x, h, w)
        if method == "gclip" and i in global_blocks:
            recorded.append(a.mean(1, keepdim=True) if head_average else a)
    last = blocks[-1]
    s = 1 / math.sqrt(visual.transformer.width // h)
    q, k, v = project_qkv(last, x, h)
    out_w, out_b = last.attn.out_proj.weight, last.attn.out_proj.bias
    if method == "clip":
        x, _ = ref_block(last, x, h)
    elif method == "maskclip":
        x = merge(v) @ out_w.T + out_b
    elif method == "clearclip":
        x = merge(torch.softmax(s * q @ q.transpose(-1, -2), -1) @ v) @ out_w.T + out_b
    elif method == "sclip":
        a = torch.softmax(s * q @ q.transpose(-1, -2), -1) + torch.softmax(
            s * k @ k.transpose(-1, -2), -1
        )
        x = x + merge(a @ v) @ out_w.T + out_b
        x = x + ffn(last, x)
    elif method == "naclip":
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        pts = torch.stack([ys.flatten(), xs.flatten()], 1).float()
        d2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
        omega = torch.zeros(gh * gw + 1, gh * gw + 1)
        omega[1:, 1:] = torch.exp(-d2 / (2 * sigma**2))
        x = merge(torch.softmax(s * k @ k.transpose(-1, -2) + omega, -1) @ v) @ out_w.T + out_b
    elif method == "gclip":
        aqq = torch.softmax(s * q @ q.transpose(-1, -2), -1)
        if head_average:
            aqq = aqq.mean(1, keepdim=True)
        a = (aqq + sum(recorded)) / (1 + len(recorded))
        x = merge(a.expand(-1, h, -1, -1) @ v) @ out_w.T + out_b
    tokens = ln(x[:, 1:], visual.ln_post) @ visual.proj
    return F.normalize(tokens, dim=-1).reshape(images.shape[0], gh, gw, -1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [(32, 32), (40, 56)])  # pretrained grid, and a resampled one
def test_method_matches_reference(clip12, tokenizer, method, size):
    images = torch.randn(2, 3, *size)
    seg = Segmenter.from_open_clip(clip12, tokenizer, method=method)
    ours = seg.dense_features(images)
    with torch.no_grad():
        ref = reference_dense(clip12, images, method)
    assert ours.shape == (2, size[0] // 8, size[1] // 8, 32)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(ours.shape[:-1]))


@pytest.mark.parametrize(
    "options",
    [
        {"head_average": False},
        {"cs_enabled": False},
        {"global_blocks": (2, 4, 9), "cs_start_block": 3},
    ],
)
def test_gclip_options_match_reference(clip12, tokenizer, options):
    images = torch.randn(1, 3, 32, 40)
    ours = Segmenter.from_open_clip(clip12, tokenizer, **options).dense_features(images)
    with torch.no_grad():
        ref = reference_dense(
            clip12,
            images,
            "gclip",
            global_blocks=options.get("global_blocks", (6, 7)),
            cs_start=options.get("cs_start_block", 7),
            cs=options.get("cs_enabled", True),
            head_average=options.get("head_average", True),
        )
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_clip_method_reproduces_open_clip_tokens(clip12, tokenizer):
    images = torch.randn(2, 3, 32, 32)
    captured = {}
    hook = clip12.visual.ln_post.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    try:
        with torch.no_grad():
            pooled = clip12.encode_image(images)
    finally:
        hook.remove()
    expected = F.normalize(captured["x"][:, 1:] @ clip12.visual.proj, dim=-1).reshape(2, 4, 4, -1)
    ours = Segmenter.from_open_clip(clip12, tokenizer, method="clip").dense_features(images)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    # the CLS path of the same forward is open_clip's pooled image embedding
    torch.testing.assert_close(
        captured["x"][:, 0] @ clip12.visual.proj, pooled, atol=1e-5, rtol=1e-4
    )


def test_parameters_unchanged_after_every_method(clip12, tokenizer):
    before = {k: v.clone() for k, v in clip12.state_dict().items()}
    for method in METHODS:
        seg = Segmenter.from_open_clip(clip12, tokenizer, method=method)
        seg.dense_features(torch.randn(1, 3, 32, 48))
    after = clip12.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_channel_suppression_touches_one_row_per_block_from_start(clip12, tokenizer):
    seg = Segmenter.from_open_clip(clip12, tokenizer, cs_start_block=5)
    suppression = seg._suppression
    assert sorted(suppression.weights) == list(range(5, 11))  # the last block has no FFN
    for index, weight in suppression.weights.items():
        original = clip12.visual.transformer.resblocks[index].mlp.c_proj.weight
        changed = (weight != original).any(dim=1).nonzero().flatten().tolist()
        assert changed == [suppression.rows[index]]
        norms = original.norm(dim=1)
        others = torch.cat([norms[: changed[0]], norms[changed[0] + 1 :]])
        torch.testing.assert_close(weight[changed[0]].norm(), others.mean())
        assert changed[0] == int(norms.argmax())


def test_suppress_outlier_row_on_hand_example():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])  # row norms 5, 1, 1
    out, row = suppress_outlier_row(w)
    assert row == 0
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]))
    assert w[0, 0] == 3.0  # input untouched


def test_attention_rows_sum_to_one(clip12):
    backbone = VisionBackbone(clip12.visual)
    with torch.no_grad():
        maps = attention_maps(backbone, torch.randn(2, 3, 32, 32))
    assert len(maps) == 11
    for a in maps:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    logits = torch.randn(2, 4, 17, 17)
    for head_average in (True, False):
        fused = fused_attention(logits, [maps[6][:, None], maps[7][:, None]], head_average)
        torch.testing.assert_close(fused.sum(-1), torch.ones(fused.shape[:-1]))


def test_auto_global_blocks(clip6, tokenizer, caplog):
    backbone = VisionBackbone(clip6.visual)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert find_global_blocks(backbone, images, ratio=0.0) == (0, 1)  # every block qualifies
        assert find_global_blocks(backbone, images, ratio=1e9) == (3, 4)  # none: middle fallback
    seg = Segmenter.from_open_clip(clip6, tokenizer)  # 6 blocks deep: default is "auto"
    assert seg.method.global_blocks == "auto"
    with caplog.at_level("INFO"):
        seg.dense_features(images)
    blocks = seg.method.global_blocks
    assert isinstance(blocks, tuple) and len(blocks) == 2 and 0 <= blocks[0] < blocks[1] <= 4
    assert seg.method.cs_start_block == blocks[0]
    assert "resolved to" in caplog.text


def test_bad_options_fail_clearly(clip12, tokenizer):
    with pytest.raises(ValueError, match="Unknown method"):
        Segmenter.from_open_clip(clip12, tokenizer, method="segclip")
    with pytest.raises(ValueError, match="global_blocks"):
        Segmenter.from_open_clip(clip12, tokenizer, global_blocks=(11,))
    with pytest.raises(ValueError, match="Unknown MethodConfig setting"):
        Segmenter.from_open_clip(clip12, tokenizer, global_block=(6, 7))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        Segmenter.from_open_clip(clip12, tokenizer).dense_features(torch.randn(1, 3, 30, 32))


def test_non_vit_tower_is_refused():
    import open_clip

    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32),
        text_cfg=open_clip.CLIPTextCfg(context_length=8, width=16, heads=2, layers=1),
    )
    with pytest.raises(UnsupportedBackboneError, match="VisionTransformer"):
        VisionBackbone(model.visual)
