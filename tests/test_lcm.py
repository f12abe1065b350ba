"""Few-step (LCM) LoRAs: the consistency objective, `sdkd lcm` on a student, its kohya export and its refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from sdkd_ext.cli import main
from sdkd_ext.checkpoint import open_model
from sdkd_ext.convert import UNET
from sdkd_ext.detect import describe
from sdkd_ext.lcm.job import adapter_params, base_of, load_adapters
from sdkd_ext.lcm.objective import ConsistencyObjective, ConsistencySpec, SolverGrid, boundary_scalings
from sdkd_ext.lora.file import kohya_metadata, read_lora, write_kohya
from sdkd_ext.lora.peft import ADAPTER, FULL_UNET_TARGETS, lora_from_peft, lora_layers
from sdkd_ext.lora.train import LoraSpec, adapted
from sdkd_ext.pipeline import build_unet
from test_lora import check_against_ldm, layout_of, one_thread  # noqa: F401 (autouse fixture)

ARGS = ["--rank", "4", "--resolution", "64", "--dtype", "fp32", "--device", "cpu", "--sample-steps", "2",
        "--guidance", "4", "--sample-guidance", "4"]


def adapted_unet(path, rank: int = 4, seed: int = 0) -> torch.nn.Module:
    """The model's UNet in fp32 with LCM adapters on every conv and linear layer, B random (so the LoRA does something)."""
    src = open_model(path)
    unet = adapted(build_unet(src, describe(src)), LoraSpec(rank, float(rank)), FULL_UNET_TARGETS, torch.float32, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(unet).values():
            w = layer.lora_B[ADAPTER].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.01)
    return unet


def test_consistency_function_is_the_identity_at_the_boundary():
    grid = SolverGrid(50)
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.equal(grid.consistency(x, eps, torch.zeros(3, dtype=torch.long)), x)
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[2] < 1e-6 and abs(c_out[2] - 1) < 1e-6
    assert grid.timesteps[0] == 19 and grid.timesteps[-1] == 999 and grid.jump == 20


def test_ddim_step_of_the_true_noise_lands_on_the_forward_process():
    grid = SolverGrid(50)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t, t_prev = torch.tensor([519, 999]), torch.tensor([499, 979])
    a, a_prev = grid.alphas[t].view(-1, 1, 1, 1), grid.alphas[t_prev].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise
    assert torch.allclose(grid.ddim_step(x_t, noise, t, t_prev), expected, atol=1e-5)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(students):
    unet = adapted_unet(students["tiny"].checkpoint)
    context = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(1)
    batch = {"latents": torch.randn(2, 4, 8, 8, generator=g), "text": torch.randn(2, 77, context, generator=g),
             "seed": torch.tensor([3, 4])}
    objective = ConsistencyObjective(lambda: base_of(unet), torch.randn(1, 77, context, generator=g), ConsistencySpec((4.0, 4.0)))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    before = objective(unet, batch)["consistency"]
    before.backward()
    assert all(p.grad is not None for p in params)
    optimizer.step()
    with torch.no_grad():
        after = objective(unet, batch)["consistency"]
    assert after < before


def test_kohya_export_round_trips_every_module_delta(students, tmp_path):
    path = students["tiny"].checkpoint
    layout = layout_of(path)
    unet = adapted_unet(path)
    lora = lora_from_peft(layout, unet)
    out = write_kohya(lora, tmp_path / "lcm.safetensors", kohya_metadata(lora, "tiny"))
    back = read_lora(out, layout)
    layers = lora_layers(unet)
    assert len(back.modules) == len(layers) > 0
    fresh = adapted_unet(path, seed=7)
    load_adapters(fresh, back, layout)
    fresh_layers = lora_layers(fresh)
    for name, layer in layers.items():
        module_id = layout.spellings[name]
        expected = layer.get_delta_weight(ADAPTER)
        assert torch.allclose(back.modules[module_id].delta(tuple(expected.shape)), expected, atol=1e-6), name
        assert torch.allclose(fresh_layers[name].get_delta_weight(ADAPTER), expected, atol=1e-6), name


def test_lcm_on_a_tiny_student_writes_a_few_step_lora_on_every_conv_and_linear_layer(students, teacher_file, tmp_path, capsys):
    tiny = students["tiny"].checkpoint
    out = tmp_path / "tiny-lcm.safetensors"
    code = main(["lcm", str(tiny), "--teacher", str(teacher_file), "--self", "3", "--steps", "3", "--out", str(out),
                 "--preview-prompts", str(write_prompts(tmp_path)), *ARGS])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sampler LCM, 4 steps, CFG 1" in printed
    layout = layout_of(tiny)
    lora = read_lora(out, layout)
    wanted = {m for m, shape in layout.shapes.items() if m.startswith(UNET) and len(shape) in (2, 4)
              and any(layout.diffusers_name(m) == t or layout.diffusers_name(m).endswith("." + t) for t in FULL_UNET_TARGETS)}
    assert set(lora.modules) == wanted
    assert adapter_params(layout, FULL_UNET_TARGETS, 4) == sum(t.numel() for m in lora.modules.values() for t in m.tensors.values())
    assert any(any(k in m for k in ("in_layers", "out_layers", "skip_connection", "emb_layers", ".op", "conv")) for m in wanted)
    assert check_against_ldm(out, layout.topology) == len(wanted)  # every key names one of ldm's (A1111's) modules
    assert any(float(m.tensors["lora_up.weight"].abs().max()) > 0 for m in lora.modules.values())  # it trained
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["sdkd_lora_kind"] == "lcm" and meta["sdkd_variant"] == "tiny" and meta["sdkd_sampler_steps"] == "4"
    assert (tmp_path / "tiny-lcm.run" / "previews").is_dir()


def write_prompts(folder):
    path = folder / "preview.txt"
    path.write_text("a red circle\na blue square\n")
    return path


def test_lcm_refuses_a_lora_of_another_topology_as_init_and_writes_nothing(students, teacher_file, tmp_path, capsys):
    teacher_lora = tmp_path / "teacher-lcm.safetensors"
    layout = layout_of(teacher_file)
    lora = lora_from_peft(layout, adapted_unet(teacher_file))
    write_kohya(lora, teacher_lora, kohya_metadata(lora, "teacher"))
    out = tmp_path / "tiny-lcm.safetensors"
    code = main(["lcm", str(students["tiny"].checkpoint), "--self", "2", "--steps", "1", "--out", str(out),
                 "--init-lora", str(teacher_lora), *ARGS])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lora-port" in err, err
    assert not out.exists() and not (tmp_path / "tiny-lcm.run").exists()


def test_lcm_refuses_a_model_that_is_not_sd1_or_a_student(tmp_path, teacher_file, capsys):
    layout = layout_of(teacher_file)
    lora = lora_from_peft(layout, adapted_unet(teacher_file))
    not_a_model = write_kohya(lora, tmp_path / "x.safetensors", kohya_metadata(lora, "teacher"))
    code = main(["lcm", str(not_a_model), "--self", "2", "--steps", "1", "--out", str(tmp_path / "y"), *ARGS])
    assert code == 2 and "MODEL x.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()


def test_lcm_refuses_a_teacher_of_other_widths(students, tmp_path, capsys):
    from sdkd_ext.tiny import save, tiny_checkpoint

    other = save(tiny_checkpoint(width=64, seed=1), tmp_path / "wide.safetensors")
    code = main(["lcm", str(students["tiny"].checkpoint), "--teacher", str(other), "--self", "2", "--steps", "1",
                 "--out", str(tmp_path / "y"), *ARGS])
    assert code == 2 and "other widths" in capsys.readouterr().err


def test_a_ported_public_lcm_lora_is_polished_on_its_own_layers_from_its_own_weights(students, teacher_file, tmp_path):
    from lcm_public import write_public_lcm

    top = layout_of(teacher_file).topology
    public = write_public_lcm(tmp_path / "pytorch_lora_weights.safetensors", top.model_channels, top.context_dim, rank=8,
                              scale=0.05)
    tiny = students["tiny"].checkpoint
    ported = tmp_path / "lcm-tiny.safetensors"
    assert main(["lora-port", str(public), "--to", str(tiny), "--out", str(ported)]) == 0
    polished = tmp_path / "lcm-tiny-polished.safetensors"
    base = ["lcm", str(tiny), "--teacher", str(teacher_file), "--self", "2", "--init-lora", str(ported), "--no-preview",
            *ARGS]  # the file's rank (8) wins over --rank 4
    assert main([*base, "--steps", "1", "--lr", "1e-9", "--out", str(polished)]) == 0
    layout = layout_of(tiny)
    before, after = read_lora(ported, layout), read_lora(polished, layout)
    assert set(after.modules) == set(before.modules) and {m.rank for m in after.modules.values()} == {8}
    for module_id, mod in before.modules.items():  # one step at lr 1e-9: the polish starts from the ported deltas
        shape = layout.shapes[module_id]
        assert torch.allclose(after.modules[module_id].delta(shape), mod.delta(shape), atol=1e-4), module_id
    moved = tmp_path / "lcm-tiny-moved.safetensors"
    assert main([*base, "--steps", "2", "--lr", "1e-2", "--out", str(moved)]) == 0
    trained = read_lora(moved, layout)
    assert any(not torch.allclose(trained.modules[m].delta(layout.shapes[m]), before.modules[m].delta(layout.shapes[m]),
                                  atol=1e-4) for m in before.modules)
    with safe_open(str(moved), "pt") as f:
        assert f.metadata()["sdkd_lcm_init"] == ported.name
