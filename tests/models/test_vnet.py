"""The V-net of Chen, Qin & Li sect. 3.1 (dustjax.models.vnet)."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.models import VNet, VNetPaper, get_model
from dustjax.models.vnet import Conv3x3x3, max_pool_2x, reflect_pad, relu_with_leaky_gradient


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def hand_count(features, kernel=27):
    """Parameters of sect. 3.1 from the layer formulas: a 3^3 conv (or transposed conv) from c_in
    to c_out kernels has 27 c_in c_out weights + c_out biases; batch norm has a scale and an
    offset per channel (its running mean/variance are statistics, not parameters)."""

    def conv(c_in, c_out):
        return kernel * c_in * c_out + c_out

    def bn(c):
        return 2 * c

    total, channels = 0, 1
    for f in features:  # (i)-(iii): two [conv, BN, ReLU] per encoder level
        total += conv(channels, f) + bn(f) + conv(f, f) + bn(f)
        channels = f
    for level in reversed(range(len(features) - 1)):  # (iv)-(vi)
        f = features[level]
        total += conv(channels, f) + bn(f)  # stride-2 transposed conv + BN
        channels = 2 * f  # concatenation with the encoder features
        if level > 0:
            total += conv(2 * f, f) + bn(f) + conv(f, f) + bn(f)
            channels = f
    f1 = features[0]
    total += conv(channels, f1) + bn(f1) + conv(f1, f1) + bn(f1)  # (vii) two 128-kernel convs
    total += conv(f1, 1)  # the one-kernel output conv + ReLU
    return total


def test_paper_parameter_count_matches_the_hand_count():
    shapes = jax.eval_shape(
        lambda: VNetPaper().init(jax.random.key(0), jnp.zeros((1, 32, 32, 32, 1)))
    )
    assert hand_count((128, 256, 512, 1024)) == 102_655_873
    assert _count(shapes["params"]) == hand_count((128, 256, 512, 1024))
    # running mean and variance: as many as the batch-norm scales and offsets
    bn_params = sum(
        _count(v["BatchNorm_0"]) for v in shapes["params"].values() if "BatchNorm_0" in v
    )
    assert (
        _count(shapes["batch_stats"])
        == bn_params
        == 2 * (2 * (128 + 256 + 512 + 1024) + (512 + 256 + 128) + 2 * (512 + 256) + 2 * 128)
    )


def test_paper_variant_activation_shapes_follow_section_3_1():
    """(32,32,32,1) -> ... (4,4,4,1024) ... (32,32,32,256) -> (32,32,32,1), from the paper."""
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name:
            captured[context.module.name] = out.shape
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: VNetPaper().init(jax.random.key(0), jnp.zeros((1, 32, 32, 32, 1))))
    assert captured["enc0_conv1"] == (1, 32, 32, 32, 128)
    assert captured["enc3_conv1"] == (1, 4, 4, 4, 1024)
    assert captured["dec2_up"] == (1, 8, 8, 8, 512)
    assert captured["dec0_up"] == (1, 32, 32, 32, 128)
    assert captured["head_conv0"] == (1, 32, 32, 32, 128)
    assert captured["head_out"] == (1, 32, 32, 32, 1)


@pytest.mark.parametrize(
    "size, features",
    [(32, (2, 4, 4, 8)), (64, (2, 4)), pytest.param(128, (2, 4, 4, 8), marks=pytest.mark.slow)],
)
def test_shapes_and_non_negative_output(size, features):
    model = VNet(features=features)
    x = jax.random.normal(jax.random.key(1), (1, size, size, size, 1))

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(0), x)
        y, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        # with a random last kernel (as after training) the ReLU clips part of the cube
        params = dict(variables["params"])
        head = dict(params["head_out"])
        head["kernel"] = jax.random.normal(jax.random.key(2), head["kernel"].shape)
        params["head_out"] = head
        y_random = model.apply({**variables, "params": params}, x, train=False)
        return y, updates, model.apply(variables, x, train=False), y_random

    y, updates, y_eval, y_random = run(x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    # at initialisation the head outputs its positive bias everywhere: the final ReLU starts
    # open on the whole cube (a zero kernel), so no gradient is cut at the start of training
    np.testing.assert_allclose(np.asarray(y), model.output_bias_init, rtol=1e-6)
    assert float(y_random.min()) >= 0.0
    assert 0 < float(jnp.mean(y_random > 0)) < 1
    assert set(updates) == {"batch_stats"}
    assert y_eval.shape == x.shape and float(y_eval.min()) >= 0.0


def test_bfloat16_compute_keeps_float32_parameters():
    model = VNet(features=(2, 4), dtype=jnp.bfloat16)
    x = jnp.ones((1, 8, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    assert model.apply(variables, x).dtype == jnp.float32  # output cast back for the loss


def test_max_pool_matches_reduce_window_pooling_and_its_gradient():
    x = jax.random.normal(jax.random.key(2), (2, 8, 4, 6, 3))
    reference = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
    np.testing.assert_array_equal(max_pool_2x(x), reference)
    g1 = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool_2x(x))))(x)
    g2 = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2)))))(x)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)


@pytest.mark.parametrize("width", [1, 2])
def test_fused_reflect_pad_equals_jnp_pad_and_its_gradient(width):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 7, 3))
    expected = jnp.pad(x, ((0, 0), *[(width, width)] * 3, (0, 0)), mode="reflect")
    np.testing.assert_array_equal(reflect_pad(x, width), expected)
    cotangent = jax.random.normal(jax.random.key(1), expected.shape)
    grad = jax.vjp(lambda a: reflect_pad(a, width), x)[1](cotangent)[0]
    ref = jax.vjp(lambda a: jnp.pad(a, ((0, 0), *[(width, width)] * 3, (0, 0)), "reflect"), x)
    np.testing.assert_allclose(grad, ref[1](cotangent)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="more than 1 cells"):
        reflect_pad(jnp.zeros((1, 1, 4, 4, 1)))


@pytest.mark.parametrize("padding", ["REFLECT", "SAME"])
@pytest.mark.parametrize(("c_in", "c_out"), [(1, 4), (4, 1), (9, 8)])
def test_channel_padded_conv_equals_flax_conv(padding, c_in, c_out):
    """Conv3x3x3 zero-pads 1-channel inputs/outputs to 8 channels for cuDNN; the numbers and the
    parameter tree are those of nn.Conv."""
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 6, c_in))
    ours = Conv3x3x3(c_out, padding=padding)
    ref = nn.Conv(c_out, (3, 3, 3), padding=padding)
    variables = ours.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(3), x)
    )
    variables = jax.tree.map(
        lambda v: jax.random.normal(jax.random.key(4), v.shape), variables
    )  # a non-zero bias too
    np.testing.assert_allclose(
        ours.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_transposed_kernel_layout_is_a_reparametrisation_of_flax_default():
    """The up-convolutions store their kernel as a forward conv's (flipped, channels swapped) so
    that XLA runs them as cuDNN backward-data convolutions; flipping and swapping maps one layout
    onto the other exactly."""
    x = jax.random.uniform(jax.random.key(5), (2, 16, 16, 16, 1))
    ours, plain = VNet(features=(4, 8, 16)), VNet(features=(4, 8, 16), up_transpose_kernel=False)
    variables = ours.init(jax.random.key(6), x)
    params = flax.core.unfreeze(variables["params"])
    for name, (c_out, c_in) in (("dec0_up", (4, 8)), ("dec1_up", (8, 16))):
        kernel = params[name]["ConvTranspose_0"]["kernel"]
        assert kernel.shape == (3, 3, 3, c_out, c_in)  # a forward conv's layout, c_out -> c_in
        params[name]["ConvTranspose_0"]["kernel"] = jnp.flip(kernel, (0, 1, 2)).swapaxes(3, 4)
    ref = {**variables, "params": params}
    assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, plain.init(jax.random.key(6), x))
    np.testing.assert_allclose(ours.apply(variables, x), plain.apply(ref, x), rtol=1e-5, atol=1e-6)


def test_output_relu_cannot_die():
    """A head whose every pre-activation is negative predicts zero; with the plain ReLU no
    gradient reaches any parameter again, with the leaky gradient the head's bias and kernel
    still move towards the (positive) targets. Forward values are the ReLU's either way."""
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(relu_with_leaky_gradient(x, 0.01), nn.relu(x))
    np.testing.assert_allclose(
        jax.grad(lambda v: relu_with_leaky_gradient(v, 0.01).sum())(x), [0.01, 0.01, 0.01, 1, 1]
    )
    cubes = jax.random.uniform(jax.random.key(7), (2, 8, 8, 8, 1))
    target = 0.3 * cubes
    grads = {}
    for leak in (0.0, 0.01):
        model = VNet(features=(4, 8), output_bias_init=-1.0, output_leak=leak)  # dead at start
        variables = model.init(jax.random.key(8), cubes)

        def loss(params, model=model, variables=variables):
            pred, _ = model.apply(
                {**variables, "params": params}, cubes, train=True, mutable=["batch_stats"]
            )
            return jnp.mean((pred - target) ** 2), pred

        (_, pred), grads[leak] = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        assert float(jnp.max(pred)) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[0.0]))
    head = grads[0.01]["head_out"]
    assert float(head["bias"][0]) < 0  # descent raises the bias towards the targets
    assert (
        float(jnp.abs(grads[0.01]["enc0_conv0"]["Conv_0"]["kernel"]).max()) == 0.0
    )  # zero head kernel
    assert float(jnp.abs(head["kernel"]).max()) > 0


def test_reflect_padding_differs_from_zero_padding_at_the_boundary():
    """A constant input stays constant through a reflect-padded conv, not a zero-padded one."""
    x = jnp.ones((1, 8, 8, 8, 1))
    outs = {}
    for padding in ("REFLECT", "SAME"):
        conv = nn.Conv(1, (3, 3, 3), padding=padding)
        params = conv.init(jax.random.key(0), x)
        outs[padding] = conv.apply(params, x)
    assert float(jnp.ptp(outs["REFLECT"])) < 1e-5
    assert float(jnp.ptp(outs["SAME"])) > 1e-3
    assert VNet().padding == "REFLECT"


def test_bad_input_shapes_are_refused():
    model = VNet(features=(2, 4, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 30, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"\(batch, nx, ny, nz, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 32)))


def test_registry():
    assert get_model("vnet") is VNet
    with pytest.raises(ValueError, match="unknown model"):
        get_model("nope")


def test_los_channels_point_away_from_the_sun():
    from dustjax.geometry import Region
    from dustjax.models.vnet import los_channels

    sr = Region.named("SR")
    ch = los_channels(sr.shape, sr.lower_pc + sr.cell_size_pc)
    assert ch.shape == (32, 32, 32, 4) and ch.dtype == np.float32
    xyz = sr.cell_centres_pc()
    r = np.linalg.norm(xyz, axis=-1)
    np.testing.assert_allclose(np.linalg.norm(ch[..., :3], axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ch[..., :3] * r[..., None], xyz, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ch[..., 3], r / r.max(), rtol=1e-6)
    # the far face's middle cells look along -X; the cells beside the Sun nearly along +-Y
    assert ch[0, 16, 16, 0] < -0.99 and ch[31, 31, 16, 1] > 0.99 and ch[31, 0, 16, 1] < -0.99


def test_los_frame_adds_four_input_channels_that_change_the_output():
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 8, 1))
    frame = (-48.0, -24.0, -24.0, 6.0, 6.0, 6.0)
    plain = VNet(features=(4, 8), conv_kernel_layout="DHWIO")
    los = VNet(features=(4, 8), conv_kernel_layout="DHWIO", los_frame_pc=frame)
    v_plain = plain.init(jax.random.key(0), x)
    v_los = los.init(jax.random.key(0), x)
    for v in (v_plain, v_los):  # the head starts at zero (a constant output): give it weights
        head = v["params"]["head_out"]
        head["kernel"] = jax.random.normal(jax.random.key(2), head["kernel"].shape)
    assert _count(v_los["params"]) - _count(v_plain["params"]) == 27 * 4 * 4  # first conv only
    assert v_los["params"]["enc0_conv0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 5, 4)
    # with the extinction weights shared, the output differs only through the LOS channels
    v_mix = jax.tree.map(lambda a: a, v_los)
    k = v_mix["params"]["enc0_conv0"]["Conv_0"]["kernel"]
    v_mix["params"]["enc0_conv0"]["Conv_0"]["kernel"] = k.at[..., 1:, :].set(0.0)
    v_ref = jax.tree.map(lambda a: a, v_plain)
    v_ref["params"] = jax.tree.map(lambda a: a, v_mix["params"])
    v_ref["params"]["enc0_conv0"]["Conv_0"]["kernel"] = k[..., :1, :]
    np.testing.assert_allclose(los.apply(v_mix, x), plain.apply(v_ref, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(los.apply(v_los, x), los.apply(v_mix, x))


def test_build_model_takes_the_los_frame_from_the_region():
    from dustjax.training.steps import build_model
    from experiments.configs import vnet_sr

    config = vnet_sr.get_config()
    assert build_model(config).los_frame_pc is None
    config.model.los_channels = True
    assert build_model(config).los_frame_pc == (-192.0, -96.0, -96.0, 6.0, 6.0, 6.0)


def test_vnet_sr_los_is_vnet_sr_plus_the_documented_changes_only():
    from dustjax.training import workdir
    from experiments.configs import vnet_sr, vnet_sr_los

    def flat(d, prefix=""):
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, prefix + key + "."))
            else:
                out[prefix + key] = value
        return out

    paper = flat(workdir.config_to_dict(vnet_sr.get_config()))
    ours = flat(workdir.config_to_dict(vnet_sr_los.get_config()))
    changed = {k: ours[k] for k in ours if paper.get(k) != ours[k]}
    assert changed == {
        "name": "vnet_sr_los",
        "model.los_channels": True,
        "model.kwargs.input_dtype": "float32",
        "optimizer.learning_rate": 5e-4,
        "schedule.name": "warmup_cosine",
        "schedule.warmup_epochs": 3.0,
        "num_epochs": 80,
        "collapse_guard.factor": 3.0,
    }
    assert set(ours) == set(paper)


@pytest.mark.parametrize("padding", ["REFLECT", "SAME"])
def test_odhwi_kernel_layout_is_the_same_model_transposed(padding):
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 8, 1))
    ref = VNet(features=(4, 8), padding=padding, conv_kernel_layout="DHWIO")
    odhwi = VNet(features=(4, 8), padding=padding, conv_kernel_layout="ODHWI")
    v_ref, v_o = ref.init(jax.random.key(0), x), odhwi.init(jax.random.key(0), x)

    def to_dhwio(path, a):
        names = [getattr(p, "key", "") for p in path]
        if names[-1] == "kernel" and "up" not in names[0] and a.ndim == 5:
            return jnp.transpose(a, (1, 2, 3, 4, 0))
        return a

    converted = jax.tree_util.tree_map_with_path(to_dhwio, v_o["params"])
    assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape, v_ref["params"])
    # same init (the DHWIO kernel transposed), so the same function and the same gradients
    jax.tree.map(np.testing.assert_array_equal, converted, v_ref["params"])
    head = jax.random.normal(jax.random.key(2), (3, 3, 3, 4, 1))
    v_ref["params"]["head_out"]["kernel"] = head
    v_o["params"]["head_out"]["kernel"] = jnp.transpose(head, (4, 0, 1, 2, 3))

    def loss(model, params, stats):
        y, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean((y - x) ** 2)

    l_ref, g_ref = jax.value_and_grad(loss, 1)(ref, v_ref["params"], v_ref["batch_stats"])
    l_o, g_o = jax.value_and_grad(loss, 1)(odhwi, v_o["params"], v_o["batch_stats"])
    np.testing.assert_allclose(l_o, l_ref, rtol=1e-6)
    g_o = jax.tree_util.tree_map_with_path(to_dhwio, g_o)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_o, g_ref)
    with pytest.raises(ValueError, match="kernel_layout"):
        VNet(features=(4, 8), conv_kernel_layout="OIDHW").init(jax.random.key(0), x)


def test_up_conv_gradients_equal_autodiff_of_conv_transpose():
    from jax import lax

    from dustjax.models.vnet import up_conv

    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 4, 6))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 5, 6))
    g = jax.random.normal(jax.random.key(2), (2, 8, 12, 8, 5))

    def ref(x, k):
        dn = ("NDHWC", "DHWIO", "NDHWC")
        return lax.conv_transpose(
            x, k, (2, 2, 2), "SAME", dimension_numbers=dn, transpose_kernel=True
        )

    y, vjp = jax.vjp(up_conv, x, k)
    y_ref, vjp_ref = jax.vjp(ref, x, k)
    np.testing.assert_array_equal(y, y_ref)
    for a, b in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_float32_input_keeps_what_bfloat16_input_rounds_away():
    """E_hat differences below bfloat16's resolution reach the network only with a float32
    input (`input_dtype`); with bfloat16 throughout, both inputs give the same output."""
    flat = jnp.full((1, 8, 8, 8, 1), 0.5)
    ripple = flat + 1e-4 * jax.random.normal(jax.random.key(3), flat.shape)  # bf16 step: 2e-3
    bf16 = VNet(features=(4, 8), dtype=jnp.bfloat16)
    f32_in = VNet(features=(4, 8), dtype=jnp.bfloat16, input_dtype="float32")
    variables = bf16.init(jax.random.key(0), flat)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, f32_in.init(jax.random.key(0), flat)
    )
    params = flax.core.unfreeze(variables["params"])
    params["head_out"]["kernel"] = jax.random.normal(jax.random.key(2), (1, 3, 3, 3, 4))
    variables = {**variables, "params": params}

    def run(model, x):  # batch statistics, as in training: the ripple survives the mean removal
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    np.testing.assert_array_equal(run(bf16, flat), run(bf16, ripple))
    assert not np.array_equal(run(f32_in, flat), run(f32_in, ripple))
    assert run(f32_in, flat).dtype == jnp.float32
