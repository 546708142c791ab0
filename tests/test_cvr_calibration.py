import pytest
import torch

from recsys.modules.cvr_calibration import (
    STRUCTURES,
    CalibratedPair,
    CTRCalibration,
    ScaledCTRCalibration,
    SECalibration,
    SEConcatCalibration,
    make_calibration,
)

B, DC, DV = 7, 12, 8


@pytest.mark.parametrize("structure, width", [("ctr_mlp", DV + 5), ("ctr_scaled", DV + 5), ("cvr_se", DV),
                                              ("cvr_se_concat", 2 * DV)])
def test_each_structure_output_shape(structure, width):
    torch.manual_seed(0)
    cal = make_calibration(structure, DC, DV, calibration_dim=5, se_reduction=3)
    out = cal(torch.randn(B, DC), torch.randn(B, DV))
    assert out.shape == (B, width) and cal.output_dim == width


def test_ctr_calibration_concatenates_cvr_with_transformed_ctr():
    torch.manual_seed(0)
    cal = CTRCalibration(DC, DV)
    h_ctr, h_cvr = torch.randn(B, DC), torch.randn(B, DV)
    out = cal(h_ctr, h_cvr)
    torch.testing.assert_close(out[:, :DV], h_cvr)
    torch.testing.assert_close(out[:, DV:], cal.transform(h_ctr))
    assert len(cal.transform.blocks) == 1 and cal.transform.output is not None  # two linear layers


def test_scaling_factor_stays_in_open_unit_interval_and_scales_the_ctr_part():
    torch.manual_seed(0)
    cal = ScaledCTRCalibration(DC, DV, init_scale=0.3)
    assert float(cal.scale.detach()) == pytest.approx(0.3, rel=1e-5)
    h_ctr, h_cvr = torch.randn(B, DC), torch.randn(B, DV)
    for logit in (-12.0, -2.0, 0.0, 3.0, 12.0):
        with torch.no_grad():
            cal.scale_logit.fill_(logit)
        alpha = float(cal.scale.detach())
        assert 0.0 < alpha < 1.0
        out = cal(h_ctr, h_cvr)
        torch.testing.assert_close(out[:, DV:], alpha * cal.transform(h_ctr))
        torch.testing.assert_close(out[:, :DV], h_cvr)
    # it is learned: the loss reaches the factor
    cal(h_ctr, h_cvr).sum().backward()
    assert cal.scale_logit.grad is not None and cal.scale_logit.grad.abs() > 0
    # a run of large gradient steps cannot push it out of (0, 1)
    opt = torch.optim.SGD([cal.scale_logit], lr=10.0)
    for _ in range(20):
        opt.zero_grad()
        (-cal(h_ctr, h_cvr)[:, DV:].abs().sum()).backward()
        opt.step()
        assert 0.0 < float(cal.scale.detach()) < 1.0


def test_se_gate_is_a_sigmoid_vector_per_sample_multiplying_cvr():
    torch.manual_seed(0)
    cal = SECalibration(DC, DV, reduction=2)
    h_ctr, h_cvr = torch.randn(B, DC), torch.randn(B, DV)
    gate = cal.gate(h_ctr)
    assert gate.shape == (B, DV) and bool(((gate > 0) & (gate < 1)).all())
    assert (gate.std(dim=0) > 1e-4).all()  # differs between samples: the CTR representation drives it
    torch.testing.assert_close(cal(h_ctr, h_cvr), h_cvr * gate)
    cat = SEConcatCalibration(DC, DV, reduction=2)
    out = cat(h_ctr, h_cvr)
    torch.testing.assert_close(out[:, :DV], h_cvr * cat.gate(h_ctr))
    torch.testing.assert_close(out[:, DV:], h_cvr)
    assert "gate_mean" in cat.tensorboard_stats()


@pytest.mark.parametrize("structure", STRUCTURES)
def test_calibrated_pair_routes_ctr_into_cvr_only(structure):
    torch.manual_seed(0)
    pair = CalibratedPair(6, 6, [10, 8, 4], [10, 8, 4], layer=1, structure=structure, se_reduction=2)
    x = torch.randn(64, 6)
    ctr, cvr = pair(x, x)
    assert ctr.shape == (64,) and cvr.shape == (64,)
    ctr.sum().backward(retain_graph=True)
    assert all(p.grad is None for p in pair.cvr_lower.parameters())  # CTR never reads the CVR network
    assert pair.calibration is not None and all(p.grad is None for p in pair.calibration.parameters())
    pair.zero_grad()
    cvr.sum().backward()
    # the CVR output reaches the CTR network's lower layers through the calibration, not its upper layers
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.ctr_lower.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in pair.ctr_upper.parameters())


def test_calibrated_pair_ctr_grad_and_no_calibration():
    torch.manual_seed(0)
    blocked = CalibratedPair(6, 6, [8, 4], [8, 4], layer=0, structure="cvr_se", ctr_grad=0.0)
    x = torch.randn(64, 6)
    blocked(x, x)[1].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in blocked.ctr_lower.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in blocked.calibration.parameters())
    plain = CalibratedPair(6, 6, [8, 4], [8, 4], layer=None)
    assert plain.calibration is None
    plain(x, x)[1].sum().backward()
    assert all(p.grad is None for p in plain.ctr_lower.parameters())
    with pytest.raises(ValueError, match="calibrated layer 2"):
        CalibratedPair(6, 6, [8, 4], [8, 4], layer=2)
