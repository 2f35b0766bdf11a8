import pytest
import torch
import torch.nn as nn

from ferbench.errors import FerbenchError
from ferbench.models import create_model, variants
from ferbench.models.emonext import SpatialTransformer, stn_feature_size
from ferbench.cost import count_flops, count_params


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_conv_params_and_macs_match_the_closed_form():
    conv = nn.Conv2d(3, 16, kernel_size=5, stride=1, padding=2)
    assert count_params(conv) == 16 * 3 * 5 * 5 + 16
    # MACs = Cout * Cin * k * k * Hout * Wout; FlopCounter counts 2 per MAC
    assert count_flops(conv, 32, 3) == 2 * 16 * 3 * 25 * 32 * 32


def test_plain_convnext_tiny_matches_timm_counts():
    m = create_model("emonext-tiny", 1000, 224, stn=False, se=False, sa_reg=False)
    assert abs(count_params(m) / 1e6 - 28.59) / 28.59 < 0.01
    assert abs(count_flops(m, 224) / 2e9 - 4.47) / 4.47 < 0.01
    timm_m = create_model("convnext-tiny", 1000, 224)
    assert count_params(timm_m) == count_params(m)


def test_resnet18_counts():
    m = create_model("resnet18", 1000, 224)
    assert abs(count_params(m) / 1e6 - 11.69) < 0.01 * 11.69
    assert abs(count_flops(m, 224) / 2e9 - 1.82) < 0.01 * 1.82


@pytest.mark.parametrize("size, millions", [("tiny", 30.56), ("small", 52.20), ("base", 91.77)])
def test_emonext_code_design_param_counts(size, millions):
    assert abs(count_params(create_model(f"emonext-{size}", 7, 224)) / 1e6 - millions) < 0.01


def test_stn_regressor_width_follows_input_size_and_stn_flops_are_counted():
    assert stn_feature_size(224) == 52 and stn_feature_size(48) == 8
    stn = SpatialTransformer(3, 224)
    assert stn.fc_loc[0].in_features == 10 * 52 * 52
    with_stn = count_flops(create_model("emonext-tiny", 7, 224, se=False, sa_reg=False), 224)
    without = count_flops(create_model("emonext-tiny", 7, 224, stn=False, se=False, sa_reg=False), 224)
    stn_gmacs = (with_stn - without) / 2e9
    assert 0.07 < stn_gmacs < 0.09  # REFERENCE.md: about 0.08 GMACs, grid_sample/affine_grid included


def test_stn_is_identity_at_init():
    torch.manual_seed(0)
    stn = SpatialTransformer(3, 48).eval()
    x = torch.rand(2, 3, 48, 48)
    assert torch.allclose(stn(x), x, atol=1e-5)


@pytest.mark.parametrize("attention", ["batch", "feature"])
def test_sa_loss_is_zero_for_batch_one_in_code_mode(attention):
    m = create_model("emonext-atto", 7, 48, attention=attention).train()
    m(torch.rand(1, 3, 48, 48))
    if attention == "batch":
        assert m.aux_loss.item() == 0.0  # a 1x1 softmax is exactly 1
    else:
        assert m.aux_loss.item() >= 0.0
    m(torch.rand(4, 3, 48, 48))
    assert m.aux_loss.item() > 0


def test_each_ablation_switch_removes_exactly_its_module():
    full = create_model("emonext-atto", 7, 48)
    stn = sum(p.numel() for p in full.stn.parameters())
    se = sum(p.numel() for d in full.downsample_layers[1:] for p in d[2].parameters())
    sa = sum(p.numel() for p in full.attention.parameters())
    assert n_params(create_model("emonext-atto", 7, 48, stn=False)) == n_params(full) - stn
    assert n_params(create_model("emonext-atto", 7, 48, se=False)) == n_params(full) - se
    assert n_params(create_model("emonext-atto", 7, 48, sa_reg=False)) == n_params(full) - sa
    plain = create_model("emonext-atto", 7, 48, stn=False, se=False, sa_reg=False)
    assert n_params(plain) == n_params(full) - stn - se - sa
    r = create_model("resface-r18", 7, 48)
    local = sum(p.numel() for p in r.local.parameters())
    csa = sum(p.numel() for p in r.csa.parameters())
    assert n_params(create_model("resface-r18", 7, 48, local=False)) == n_params(r) - local
    assert n_params(create_model("resface-r18", 7, 48, csa=False)) == n_params(r) - csa
    assert n_params(create_model("resface-r18", 7, 48, local=False, csa=False)) == n_params(create_model("resnet18", 7, 48))


def test_se_placement_paper_puts_se_after_each_stage():
    m = create_model("emonext-atto", 7, 48, se_placement="stage")
    assert m.stage_se is not None and len(m.stage_se) == 4
    assert all(len(d) == 2 for d in m.downsample_layers[1:])


SMALL = ["resnet18", "convnext-atto", "emonext-atto", "emonext-femto", "resface-r18"]


@pytest.mark.parametrize("name", sorted(variants()))
@pytest.mark.slow
def test_every_variant_runs_forward_and_backward_at_48(name):
    torch.manual_seed(0)
    m = create_model(name, 7, 48).train()
    out = m(torch.rand(2, 3, 48, 48))
    loss = out.sum() + (m.aux_loss if getattr(m, "aux_loss", None) is not None else 0)
    loss.backward()
    assert out.shape == (2, 7)
    # EmoNeXt's code builds a value projection whose output it discards: faithfully dead weights
    dead = [n for n, p in m.named_parameters() if p.grad is None]
    assert all(n.startswith("attention.value.") for n in dead), dead


@pytest.mark.parametrize("name", SMALL)
def test_small_variants_run_at_224_and_grayscale(name):
    m = create_model(name, 8, 224).train()
    out = m(torch.rand(2, 3, 224, 224))
    (out.sum() + (m.aux_loss if getattr(m, "aux_loss", None) is not None else 0)).backward()
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    missing = [n for n, p in m.named_parameters() if p.grad is None and not n.startswith("attention.value.")]
    assert missing == []  # every trained weight is reached at 224 too (EmoNeXt's value projection is dead by design)
    g = create_model(name, 8, 48, in_chans=1)
    assert g(torch.rand(2, 1, 48, 48)).shape == (2, 8)


def test_unknown_model_and_option_are_one_line_errors():
    with pytest.raises(FerbenchError, match="unknown model 'resnet19'"):
        create_model("resnet19", 7, 48)
    with pytest.raises(FerbenchError, match="unknown option 'stn'"):
        create_model("resnet18", 7, 48, stn=False)
    with pytest.raises(FerbenchError, match="option attention='spatial': Input should be 'batch' or 'feature'"):
        create_model("emonext-atto", 7, 48, attention="spatial")


def test_resface_product_fusion_and_channel_branch_are_efficientfaces():
    """EfficientFace's Modulator: att = sigmoid(Channel(F) * Spatial(F)), Channel = GAP -> FC -> BN1d ->
    ReLU -> FC (zengqunzhao/EfficientFace models/modulator.py), re-derived from the module's own layers."""
    import torch

    from ferbench.models.resface import ChannelSpatialAggregation

    torch.manual_seed(0)
    csa = ChannelSpatialAggregation(64, 16, 4, "product", "fc_bn").eval()
    assert [type(m).__name__ for m in csa.channel] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    f = torch.randn(2, 64, 12, 12)
    with torch.no_grad():
        zc = csa.channel(f.mean((2, 3)))[:, :, None, None].expand_as(f)
        zs = csa.spatial(f).expand_as(f)
        torch.testing.assert_close(csa(f), torch.sigmoid(zc * zs) * f)
    summed = ChannelSpatialAggregation(64, 16, 4, "sum").eval()  # the overview article's branch and formula
    assert [type(m).__name__ for m in summed.channel] == ["Linear", "ReLU", "Linear"]
    with torch.no_grad():
        zc = summed.channel(f.mean((2, 3)))[:, :, None, None]
        torch.testing.assert_close(summed(f), torch.sigmoid(zc + summed.spatial(f)) * f)


def test_a_family_with_every_added_module_off_is_its_base_family():
    """`compare emonext convnext` must not count a fully ablated EmoNeXt (the ConvNeXt rows of
    emonext_table2) as an EmoNeXt, nor a ResFace without its branches as a ResFace."""
    from ferbench.models import family_of

    assert family_of("emonext-atto") == "emonext"
    assert family_of("emonext-atto", {"stn": False, "se": False, "sa_reg": False}) == "convnext"
    assert family_of("emonext-atto", {"stn": False, "se": False}) == "emonext"  # the attention loss is still on
    assert family_of("resface-r18", {"local": False, "csa": False}) == "resnet"
    assert family_of("resface-r18", {"local": False}) == "resface"
    assert family_of("convnext-atto") == "convnext" and family_of("resnet18") == "resnet"
    assert family_of("myfer-small") == "myfer"  # a plug-in not installed here: its leading letters
